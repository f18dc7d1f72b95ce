"""`vecsync reindex`: show and steer the model change of each sync's collection (vecsync.reindex).

The upserter does the store's side of a change: it starts one when a sync's EMBEDDING_MODEL names another model
than the one its collection name serves, switches the name once the new collection has caught up, and drops
collections. This command only reads the records in Redis and writes the requests the upserter acts on:

- no option: what each name serves, the configured model, and the change (phase, progress, rate, time left);
- ``--wait``: until each name serves a collection of the configured model (exit 0), or the change to it ends
  without a switch (aborted, failed) or ``--timeout`` passes (exit 1);
- ``--abort``: ends a building change; the upserter drops the new collection, the served one is not touched;
- ``--drop-old``: asks the upserter to drop the collections the name no longer serves;
- ``--retry``: after a change to the configured model was aborted or failed (the upserter does not start that
  change again by itself), forgets it, so that the upserter starts a new one.

A collection that several syncs write into is one name with one change: it is shown and steered once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from vecsync import reindex
from vecsync.cli.context import EXIT_FAILED, EXIT_OK, Context
from vecsync.reindex import Phase, Reindex, Serving

# How often a waiting command reads the records again, and how often --wait prints where the change stands.
POLL_S = 0.5
PROGRESS_EVERY_S = 5.0
# How long --abort and --drop-old wait for the upserter to drop what they asked for, unless --timeout says.
DROP_TIMEOUT_S = 60.0
ABORTED_BY_OPERATOR = "Aborted with `vecsync reindex --abort`."
# How the newest change ended, in a sentence that says there is nothing building to abort.
_ENDED = {Phase.SWITCHED: "switched", Phase.ABORTED: "was aborted", Phase.FAILED: "failed", Phase.BUILDING: "builds"}


@dataclass(frozen=True)
class ModelState:
    """What a collection name serves, the model its syncs are configured with, and its newest change, read at
    ``now``."""

    name: str
    configured: str | None
    serving: Serving | None
    change: Reindex | None
    now: float

    @property
    def serves_configured(self) -> bool:
        """Whether the name serves a collection of the configured model (always, with no model configured)."""
        if self.configured is None:
            return True
        return self.serving is not None and self.serving.model == self.configured

    @property
    def ended_without_switch(self) -> bool:
        """Whether the change to the configured model was aborted or failed: the upserter does not start it again
        by itself (``--retry`` does)."""
        return (
            self.change is not None
            and self.change.model == self.configured
            and self.change.phase in (Phase.ABORTED, Phase.FAILED)
        )

    @property
    def due(self) -> bool:
        """Whether a change to the configured model is due but not started yet: the upserter starts it when it next
        looks (when it starts, with the configuration it runs with)."""
        return (
            self.serving is not None
            and not self.serves_configured
            and not (self.change is not None and self.change.building)
            and not self.ended_without_switch
        )

    def change_report(self) -> dict[str, Any] | None:
        """The newest change as `vecsync status --json` reports it (see status_report), None before the first."""
        change = self.change
        if change is None:
            return None
        end = self.now if change.finished_at is None else change.finished_at
        elapsed = max(0.0, end - change.started_at)
        rate = change.embedded / elapsed if elapsed > 0 else 0.0
        total = _total(change)
        eta = None
        if change.building and total is not None and rate > 0:
            eta = max(0, total - change.embedded) / rate
        return {
            "number": change.number,
            "phase": change.phase.value,
            "model": change.model,
            "from_model": change.from_model,
            "collection": change.collection,
            "from_collection": change.from_collection,
            "embedded": change.embedded,
            "total": total,
            "rate_per_s": rate,
            "eta_s": eta,
            "started_at": change.started_at,
            "finished_at": change.finished_at,
            "progress_age_s": max(0.0, self.now - change.progress_at),
            "error": change.error,
            "dropped": _json_list(change.fields.get("dropped")),
            "dropped_old": _json_list(change.fields.get("dropped_old")),
        }

    def serving_text(self) -> str:
        served = "nothing recorded yet" if self.serving is None else _collection_text(self.serving)
        return f"{self.name}: serves {served}; configured model {model_text(self.configured)}"

    def change_text(self) -> str | None:
        """One line on the change, or on the change that is due; None when there is neither."""
        report = self.change_report()
        if self.due:
            return (
                f"a change to {model_text(self.configured)} is due: the upserter starts it when it next looks "
                "(at its start, with this configuration)"
            )
        if report is None:
            return None
        return f"change {report['number']}: {change_summary(report)}"


def change_summary(report: Mapping[str, Any]) -> str:
    """A change (a ``model_change`` of `vecsync status --json`) in words: phase, models, collections, progress."""
    models = f"{model_text(report['from_model'])} -> {model_text(report['model'])}"
    collections = f"{report['from_collection']} -> {report['collection']}"
    total = report["total"]
    embedded = (
        f"{report['embedded']} documents embedded (the total not counted yet)"
        if total is None
        else f"{report['embedded']} of {total} documents embedded"
    )
    phase = report["phase"]
    if phase == Phase.BUILDING.value:
        eta = report["eta_s"]
        left = "time left unknown" if eta is None else f"about {eta:.0f} s left"
        return (
            f"building {report['collection']} ({models}): {embedded}, {report['rate_per_s']:.1f}/s, {left}, "
            f"last progress {report['progress_age_s']:.0f} s ago"
        )
    if phase == Phase.SWITCHED.value:
        dropped_old = report["dropped_old"]
        kept = (
            f"dropped since: {', '.join(dropped_old)}"
            if dropped_old
            else f"{report['from_collection']} is kept until `vecsync reindex --drop-old`"
        )
        return f"switched ({models}, {collections}), {embedded}; {kept}"
    dropped = report["dropped"]
    dropped_text = f"dropped {', '.join(dropped)}" if dropped else f"{report['collection']} not dropped"
    error = report["error"] or "no reason recorded"
    return f"{phase} ({models}, {collections}) at {embedded}: {error} ({dropped_text})"


def model_text(model: str | None) -> str:
    return model if model else "(the embedding-api's default)"


def model_states(ctx: Context, sync_name: str | None) -> list[ModelState]:
    """The model state of each collection name of the chosen syncs, each name once."""
    configured: dict[str, str | None] = {}
    for sync in ctx.chosen_syncs(sync_name):
        # Syncs that share a collection share its model too: the definition file is refused otherwise.
        configured.setdefault(sync.qdrant_collection, sync.embedding_model)
    return [read_model_state(ctx.redis, name, model) for name, model in configured.items()]


def read_model_state(client: redis.Redis, name: str, configured: str | None) -> ModelState:
    serving, change = reindex.read_state(client, name)
    return ModelState(name, configured, serving, change, time.time())


def reindex_command(ctx: Context, args: argparse.Namespace) -> int:
    """Dispatch `vecsync reindex` by its option (see the module's docstring)."""
    states = model_states(ctx, args.sync)
    if args.wait:
        return _wait(ctx, [state.name for state in states], {s.name: s.configured for s in states}, args.timeout)
    if args.abort:
        return _worst([_abort(ctx, state, _drop_timeout(args.timeout)) for state in states])
    if args.drop_old:
        return _worst([_drop_old(ctx, state, _drop_timeout(args.timeout)) for state in states])
    if args.retry:
        return _worst([_retry(ctx, state) for state in states])
    for state in states:
        print(state.serving_text())
        line = state.change_text()
        if line is not None:
            print(f"  {line}")
    return EXIT_OK


def _wait(ctx: Context, names: list[str], configured: dict[str, str | None], timeout_s: float | None) -> int:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waiting = list(names)
    statuses: list[int] = []
    printed_at = time.monotonic()
    first = True
    while True:
        for name in list(waiting):
            state = read_model_state(ctx.redis, name, configured[name])
            outcome = _outcome(state, first)
            if outcome is not None:
                status, message = outcome
                print(message, file=sys.stdout if status == EXIT_OK else sys.stderr)
                statuses.append(status)
                waiting.remove(name)
        first = False
        if not waiting:
            return _worst(statuses)
        if deadline is not None and time.monotonic() >= deadline:
            for name in waiting:
                state = read_model_state(ctx.redis, name, configured[name])
                print(
                    f"Timed out after {timeout_s:g} s waiting for {name} to serve "
                    f"{model_text(state.configured)}: {_standing(state)}",
                    file=sys.stderr,
                )
            return EXIT_FAILED
        if time.monotonic() - printed_at >= PROGRESS_EVERY_S:
            for name in waiting:
                print(f"{name}: {_standing(read_model_state(ctx.redis, name, configured[name]))}", file=sys.stderr)
            sys.stderr.flush()
            printed_at = time.monotonic()
        time.sleep(POLL_S)


def _outcome(state: ModelState, first: bool) -> tuple[int, str] | None:
    """How waiting for ``state``'s name ends: (exit status, message), or None while its change is due or running."""
    if state.configured is None:
        return EXIT_OK, (
            f"{state.name}: no EMBEDDING_MODEL is configured, so no model change is ever started: nothing to wait for."
        )
    if state.serves_configured:
        assert state.serving is not None
        if first and not (state.change is not None and state.change.phase is Phase.SWITCHED):
            return EXIT_OK, f"{state.name} serves {_collection_text(state.serving)}, the configured model already."
        return EXIT_OK, f"{state.name} now serves {_collection_text(state.serving)}"
    if state.ended_without_switch:
        report = state.change_report()
        assert report is not None
        return EXIT_FAILED, (
            f"{state.name}: the change to {model_text(state.configured)} ended without a switch: change "
            f"{report['number']} {change_summary(report)}. {state.name} still serves "
            f"{'nothing recorded' if state.serving is None else _collection_text(state.serving)}. "
            "Fix the cause, then run `vecsync reindex --retry` to start the change again."
        )
    return None


def _standing(state: ModelState) -> str:
    """Where a change that --wait waits for stands, in words."""
    if state.serving is None:
        return "the upserter has not recorded what the name serves yet (has it started?)"
    if state.due:
        return (
            f"serves {_collection_text(state.serving)}; the change to {model_text(state.configured)} is due, not "
            "started yet (is the upserter running with this configuration?)"
        )
    line = state.change_text()
    return f"serves {_collection_text(state.serving)}; {line}" if line else f"serves {_collection_text(state.serving)}"


def _abort(ctx: Context, state: ModelState, timeout_s: float) -> int:
    change = state.change
    if change is None or not change.building:
        newest = (
            "it has had no model change"
            if change is None
            else f"its newest, change {change.number}, {_ENDED[change.phase]}"
        )
        print(f"{state.name}: no model change is building ({newest}), so there is nothing to abort.", file=sys.stderr)
        return EXIT_FAILED
    served = "nothing recorded" if state.serving is None else _collection_text(state.serving)
    ctx.confirm(
        f"Abort change {change.number} of {state.name} ({model_text(change.from_model)} -> "
        f"{model_text(change.model)}, {change.embedded} documents embedded): the upserter drops {change.collection}; "
        f"{state.name} keeps serving {served}, untouched."
    )
    if not reindex.end(ctx.redis, state.name, change.number, Phase.ABORTED, ABORTED_BY_OPERATOR):
        now = reindex.read_reindex(ctx.redis, state.name)
        phase = "gone" if now is None or now.number != change.number else now.phase.value
        print(f"{state.name}: change {change.number} ended meanwhile ({phase}); nothing was aborted.", file=sys.stderr)
        return EXIT_FAILED
    print(f"{state.name}: change {change.number} aborted; waiting for the upserter to drop {change.collection}.")
    dropped = _wait_for(lambda: _dropped(ctx.redis, state.name, change.number), timeout_s)
    still = f"{state.name} still serves {served}, untouched."
    if dropped is None:
        print(
            f"{state.name}: the upserter has not dropped {change.collection} within {timeout_s:g} s; it drops it when "
            f"it next runs (is it running?). {still}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"{state.name}: the upserter dropped {', '.join(dropped) if dropped else 'nothing'}. {still}")
    return EXIT_OK


def _dropped(client: redis.Redis, name: str, number: int) -> list[str] | None:
    """What the upserter recorded it dropped for the abort of change ``number``; None until it did."""
    fields = client.hmget(reindex.reindex_key(name), ["number", "dropped"])
    if fields[0] != str(number):
        return None
    return _json_list(fields[1])


def _drop_old(ctx: Context, state: ModelState, timeout_s: float) -> int:
    change = state.change
    if change is not None and change.building:
        print(
            f"{state.name}: change {change.number} is building {change.collection}, so the old collection is still "
            "the one served: --drop-old waits for the switch. Run it again once `vecsync reindex --wait` returns, "
            "or `vecsync reindex --abort` first.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if change is None:
        print(f"{state.name}: it has had no model change, so there is no old collection to drop.")
        return EXIT_OK
    served = "nothing recorded" if state.serving is None else _collection_text(state.serving)
    ctx.confirm(
        f"Drop the collections {state.name} no longer serves (it serves {served}): setting an older model back "
        "afterwards builds its collection anew instead of switching back."
    )
    key = reindex.reindex_key(state.name)
    ctx.redis.hdel(key, "dropped_old")  # what is read back below is then this request's
    reindex.request_drop_old(ctx.redis, state.name)
    print(f"{state.name}: asked the upserter to drop the collections it no longer serves; waiting for it.")
    done = _wait_for(lambda: None if reindex.drop_old_requested(ctx.redis, state.name) else True, timeout_s)
    if done is None:
        print(
            f"{state.name}: the upserter has not handled the request within {timeout_s:g} s; it does when it next "
            "runs (is it running?).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    dropped = _json_list(ctx.redis.hget(key, "dropped_old")) or []
    print(f"{state.name}: the upserter dropped {', '.join(dropped) if dropped else 'nothing'}; it serves {served}.")
    return EXIT_OK


def _retry(ctx: Context, state: ModelState) -> int:
    change = state.change
    if state.serves_configured or not state.ended_without_switch or change is None:
        if state.serves_configured:
            why = f"it serves {model_text(state.configured)}, the configured model"
        elif change is not None and change.building:
            why = f"change {change.number} to {model_text(change.model)} is building"
        else:
            why = f"no change to {model_text(state.configured)} was aborted or failed: the upserter starts one itself"
        print(f"{state.name}: nothing to retry: {why}.", file=sys.stderr)
        return EXIT_FAILED
    if change.phase is Phase.ABORTED and _json_list(change.fields.get("dropped")) is None:
        print(
            f"{state.name}: the upserter has not dropped {change.collection} of the aborted change {change.number} "
            "yet, and forgetting the change now would leave it behind. Run --retry again once it has "
            "(`vecsync reindex` shows it).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    # The :number counter stays, so that the new change builds a collection of a new name.
    ctx.redis.delete(reindex.reindex_key(state.name))
    print(
        f"{state.name}: forgot change {change.number} ({change.phase}). The upserter starts a new change to "
        f"{model_text(state.configured)} when it next looks, building a new collection beside "
        f"{state.serving.collection if state.serving else 'the served one'}; follow it with "
        "`vecsync reindex --wait`."
    )
    return EXIT_OK


def _wait_for(read: Any, timeout_s: float) -> Any:
    """What ``read()`` returns once it is not None, or None once ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value is not None or time.monotonic() >= deadline:
            return value
        time.sleep(POLL_S)


def _drop_timeout(timeout_s: float | None) -> float:
    return DROP_TIMEOUT_S if timeout_s is None else timeout_s


def _worst(statuses: list[int]) -> int:
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


def _collection_text(serving: Serving) -> str:
    return f"{serving.collection} ({model_text(serving.model)})"


def _total(change: Reindex) -> int | None:
    """The documents of the snapshots, None until one was counted."""
    return change.total if any(name.startswith("total:") for name in change.fields) else None


def _json_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    value = json.loads(text)
    return [str(item) for item in value] if isinstance(value, list) else None
