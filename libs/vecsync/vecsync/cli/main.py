"""``vecsync``: the operator CLI."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis

from vecsync import settings as settings_module
from vecsync.cli.reader import embed_query, open_reader
from vecsync.cli.settings import CliSettings
from vecsync.constants import RESUME_TOKEN_UPDATED_KEY
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.streams import StreamStats, connect, redact_url, stream_stats

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_module.load(CliSettings)
        return int(args.command(settings, args))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (VecsyncError, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vecsync", description="Operate the vecsync pipeline.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="show each stage's backlog, lag, pending entries and dead letters")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(command=status_command)

    search = commands.add_parser("search", help="semantic search over the Qdrant collection")
    search.add_argument("text", help="what to search for")
    search.add_argument("--limit", type=int, default=5, help="number of hits (default 5)")
    search.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep hits whose payload FIELD equals VALUE",
    )
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(command=search_command)
    return parser


def status_command(settings: CliSettings, args: argparse.Namespace) -> int:
    client = connect(settings.redis_url)
    stages = [
        ("stage1", stream_stats(client, settings.stage1_stream, settings.stage1_group, with_consumers=True)),
        ("stage2", stream_stats(client, settings.stage2_stream, settings.stage2_group, with_consumers=True)),
    ]
    updated = client.get(RESUME_TOKEN_UPDATED_KEY)
    token_age = time.time() - float(updated) if updated else None
    if args.json:
        report: dict[str, Any] = {name: stats.as_dict() for name, stats in stages}
        report["producer"] = {"resume_token_age_s": token_age}
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"Redis {redact_url(settings.redis_url)}")
    for name, stats in stages:
        _print_stage(name, stats)
    age = "never stored" if token_age is None else f"advanced {token_age:.1f} s ago"
    print(f"producer resume token: {age}")
    return EXIT_OK


def _print_stage(name: str, stats: StreamStats) -> None:
    lag = "unknown" if stats.lag is None else str(stats.lag)
    print(
        f"{name} {stats.stream} / {stats.group}: length {stats.length}, lag {lag}, pending {stats.pending}, "
        f"oldest pending {stats.oldest_pending_age_s:.1f} s, dead letters {stats.dlq_length}"
    )
    if not stats.group_exists:
        print("  (no consumer group yet: no worker has started)")
    for consumer in stats.consumers:
        print(f"  consumer {consumer.name}: pending {consumer.pending}, idle {consumer.idle_s:.1f} s")


def search_command(settings: CliSettings, args: argparse.Namespace) -> int:
    match = {}
    for item in args.filter:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ConfigurationError(f"--filter takes FIELD=VALUE, got {item!r}")
        match[field] = value
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {args.limit}")
    vector = embed_query(settings, args.text)
    hits = open_reader(settings).search(vector, limit=args.limit, match=match or None)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not hits:
        print("No hits.")
    for hit in hits:
        payload = hit.payload
        print(f"{hit.score:.3f}  {payload.get('mongo_id')}  {payload.get('subject', '')}")
        fields = {
            k: v
            for k, v in payload.items()
            if k not in {"mongo_id", "subject", "text", "text_sha256", "source", "version"}
        }
        if fields:
            print("       " + ", ".join(f"{key}={value}" for key, value in fields.items()))
        snippet = " ".join(str(payload.get("text", "")).split())
        print(f"       {snippet[:160]}{'...' if len(snippet) > 160 else ''}")
    return EXIT_OK


def cli() -> None:
    sys.exit(main())
