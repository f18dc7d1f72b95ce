"""``vecsync``: the operator CLI.

Exit codes: 0 success, 1 failure, 2 bad usage or configuration (or a change not
confirmed), 3 `verify` found differences it did not repair, 130 interrupted
(long commands save their progress and resume when run again), 141 the output's
reader went away (`vecsync status | head`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import redis

from vecsync import settings as settings_module
from vecsync.cli import dlq, maintenance
from vecsync.cli import rebuild as rebuild_module
from vecsync.cli import reindex as reindex_module
from vecsync.cli import repartition as repartition_module
from vecsync.cli.context import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    Declined,
)
from vecsync.cli.search import FILTER_HELP, search_command
from vecsync.cli.settings import CliSettings
from vecsync.cli.status import print_status, status_report
from vecsync.env_file import tracked_env_file
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.partitions import check_count
from vecsync.redaction import redact
from vecsync.search_modes import SearchMode
from vecsync.syncs import settings_for


def main(argv: list[str] | None = None, ctx: Context | None = None) -> int:
    args = _parser().parse_args(argv)
    warning = tracked_env_file()
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        ctx = ctx or Context(settings_module.load(CliSettings))
        ctx.assume_yes = ctx.assume_yes or args.yes
        # The definition file is read whole before anything connects: an invalid one stops here with exit 2.
        syncs = ctx.syncs
        if getattr(args, "checks_partitions", True):
            streams = [stream for sync in syncs for stream in settings_for(ctx.settings, sync).pipeline_streams()]
            check_count(ctx.redis, streams, ctx.settings.stream_partitions)
        status = int(args.command(ctx, args))
        sys.stdout.flush()  # here, where a closed pipe can still be told apart from a failure
        return status
    except BrokenPipeError:
        # The reader has all it wanted. Point stdout at nothing, so that the interpreter's last flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ConfigurationError, Declined) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (VecsyncError, redis.RedisError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Long commands saved their progress: run the same command again to resume.", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    finally:
        if ctx is not None:
            ctx.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vecsync", description="Operate the vecsync pipeline.")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    # The global options again for every command, so that they work after it too (`vecsync resync --yes`). Left
    # out, they keep the value given before the command: SUPPRESS sets nothing.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--yes", "-y", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = _Commands(parser.add_subparsers(required=True, metavar="COMMAND"), options)

    status = commands.add_parser(
        "status",
        help="each stage's backlog, lag, pending entries, consumers, dead letters; each sync's model change",
        description="With --json, each sync's report (under syncs) includes its model: serving {collection, model, "
        "dim} (what its collection name serves), embedding_model (the configured one; null: the embedding-api's "
        "default), model_change_due (a change to it is due, not started), and model_change, the newest change "
        "(null before the first): {number, phase (building, switched, aborted, failed), model, from_model, "
        "collection, from_collection, embedded, total, rate_per_s, eta_s, started_at, finished_at, "
        "progress_age_s, error, dropped, dropped_old}.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    status.set_defaults(command=status_command)

    # Which sync a command works on: every one when left out (search: the only one, required when several).
    one_sync = argparse.ArgumentParser(add_help=False)
    one_sync.add_argument("--sync", metavar="NAME", help="only this sync of VECSYNC_CONFIG (default: every sync)")

    search = commands.add_parser("search", help="semantic, keyword or hybrid search over the Qdrant collection")
    search.add_argument("text", help="what to search for")
    search.add_argument(
        "--mode",
        choices=[mode.value for mode in SearchMode],
        help="dense (by meaning), sparse (by BM25 keywords) or hybrid (both, fused); default hybrid where the "
        "collection has sparse vectors (SPARSE_MODEL), else dense",
    )
    search.add_argument("--limit", type=int, default=5, help="number of documents, or of chunks (default 5)")
    search.add_argument(
        "--chunks", action="store_true", help="show the nearest chunks, several of a document among them, not documents"
    )
    search.add_argument("--filter", action="append", default=[], metavar="CONDITION", help=FILTER_HELP)
    search.add_argument("--sync", metavar="NAME", help="the sync to search (required when there are several)")
    search.add_argument("--json", action="store_true", help="print JSON")
    # Search reads only the collection, and is what search clients run: it needs no Redis, so no partition check.
    search.set_defaults(command=search_command, checks_partitions=False)

    dead = _Commands(
        commands.add_parser("dlq", help="dead letters: list, show, replay, purge").add_subparsers(
            required=True, metavar="ACTION"
        ),
        options,
    )
    stage = argparse.ArgumentParser(add_help=False)
    stage.add_argument("--stage", type=int, choices=[1, 2], help="only this stage's DLQ (default: both)")
    listing = dead.add_parser("list", parents=[stage], help="list dead letters, oldest first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(command=lambda ctx, a: dlq.list_command(ctx, a.stage, a.json))
    show = dead.add_parser("show", parents=[stage], help="show one dead letter in full")
    show.add_argument("id")
    show.set_defaults(command=lambda ctx, a: dlq.show_command(ctx, a.id, a.stage))
    replay = dead.add_parser("replay", parents=[stage], help="put dead letters back on their stream")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(command=lambda ctx, a: dlq.replay_command(ctx, a.ids, a.all, a.stage))
    purge = dead.add_parser("purge", parents=[stage], help="delete dead letters for good")
    purge.set_defaults(command=lambda ctx, a: dlq.purge_command(ctx, a.stage))

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--batch-size", type=int, default=500, help="documents per batch (default 500)")
    resync = commands.add_parser(
        "resync", parents=[batch, one_sync], help="publish MongoDB's current documents to stage 1 again"
    )
    resync.add_argument("--filter", help="only documents matching this MongoDB query (JSON)")
    resync.add_argument("--restart", action="store_true", help="discard the progress of an interrupted resync")
    resync.set_defaults(
        command=lambda ctx, a: maintenance.resync_command(ctx, a.filter, a.restart, a.batch_size, sync_name=a.sync)
    )

    verify = commands.add_parser("verify", parents=[batch, one_sync], help="compare MongoDB with Qdrant")
    verify.add_argument("--repair", action="store_true", help="re-enqueue exactly the documents that differ")
    verify.add_argument("--restart", action="store_true", help="discard the progress of an interrupted verify")
    verify.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the embedding-api to load its model (default 120)",
    )
    verify.add_argument(
        "--skip-model-check",
        action="store_true",
        help="do not check points for vectors of another model (when the embedding-api cannot tell its model)",
    )
    verify.set_defaults(
        command=lambda ctx, a: maintenance.verify_command(
            ctx,
            a.repair,
            a.restart,
            a.batch_size,
            ready_timeout_s=a.ready_timeout,
            skip_model_check=a.skip_model_check,
            sync_name=a.sync,
        )
    )

    rebuild = commands.add_parser(
        "rebuild", parents=[batch, one_sync], help="recreate the Qdrant collection from the streams"
    )
    rebuild.add_argument("--from-mongo", action="store_true", help="re-embed everything from MongoDB instead")
    rebuild.set_defaults(
        command=lambda ctx, a: rebuild_module.rebuild_command(ctx, a.from_mongo, a.batch_size, sync_name=a.sync)
    )

    reindex = commands.add_parser(
        "reindex",
        parents=[one_sync],
        help="show, wait for, abort or clean up the change of a collection to the model EMBEDDING_MODEL names",
        description="Without an option: what each collection name serves, the configured EMBEDDING_MODEL and the "
        "model change (phase, documents embedded of total, rate, time left). The upserter starts a change when the "
        "configured model differs from the served one and switches the name once the new collection caught up.",
    )
    action = reindex.add_mutually_exclusive_group()
    action.add_argument(
        "--wait",
        action="store_true",
        help="return once the name serves a collection of the configured model: exit 0 on the switch (or at once "
        "when it already does), 1 when the change is aborted or fails, or on --timeout; a change that is due but "
        "not yet started counts as running",
    )
    action.add_argument(
        "--abort",
        action="store_true",
        help="end the change that is building: the upserter drops the new collection; the served one is untouched",
    )
    action.add_argument(
        "--drop-old", action="store_true", help="have the upserter drop the collections the name no longer serves"
    )
    action.add_argument(
        "--retry",
        action="store_true",
        help="after the change to the configured model was aborted or failed, have the upserter start a new one",
    )
    reindex.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait: --wait without it waits for as long as it takes; --abort and --drop-old wait "
        f"{reindex_module.DROP_TIMEOUT_S:g} s for the upserter by default",
    )
    # It reads and writes only the records of vecsync.reindex, no stream: no partition check.
    reindex.set_defaults(command=reindex_module.reindex_command, checks_partitions=False)

    trim = commands.add_parser("trim", help="remove acknowledged entries outside the retention window")
    trim.set_defaults(command=lambda ctx, a: maintenance.trim_command(ctx))

    repartition = commands.add_parser(
        "repartition", help="move a drained pipeline's tombstones and producer state to STREAM_PARTITIONS"
    )
    repartition.add_argument(
        "--from",
        dest="from_count",
        type=int,
        metavar="N",
        help="the STREAM_PARTITIONS the processes ran with, where no number is stored yet",
    )
    repartition.set_defaults(
        command=lambda ctx, a: repartition_module.repartition_command(ctx, a.from_count), checks_partitions=False
    )
    return parser


class _Commands:
    """Adds commands that each accept the global options too."""

    def __init__(self, actions: Any, options: argparse.ArgumentParser) -> None:
        self.actions = actions
        self.options = options

    def add_parser(self, name: str, *, parents: list[argparse.ArgumentParser] | None = None, **kwargs: Any) -> Any:
        return self.actions.add_parser(name, parents=[self.options, *(parents or [])], **kwargs)


def status_command(ctx: Context, args: argparse.Namespace) -> int:
    terminal = sys.stdout.isatty()
    while True:
        report = status_report(ctx)
        if args.watch and terminal:
            print("\033[2J\033[H", end="")  # clear the terminal
        if args.json:
            # Watched into a pipe: one report per line (JSON Lines), which a reader can take one at a time.
            print(json.dumps(report, indent=None if args.watch and not terminal else 2))
        else:
            print_status(ctx, report)
        sys.stdout.flush()
        if not args.watch:
            return EXIT_OK
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK


def cli() -> None:
    sys.exit(main())
