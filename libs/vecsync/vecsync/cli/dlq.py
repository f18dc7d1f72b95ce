"""`vecsync dlq`: list, show, replay and purge dead letters.

The dead letters of every sync's stage streams are listed and purged together; a letter is replayed in the context
of the sync whose stream it came from (the stage streams of a definition's sync are named after it), so that its
document is re-read from that sync's collection, through its filter and mapping.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import redis

from vecsync.cli.context import EXIT_FAILED, EXIT_OK, Context, count, progress
from vecsync.constants import dlq_stream
from vecsync.documents import source_projection
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.partitions import base_name
from vecsync.stage1 import publish_current_states, put_back


@dataclass
class DeadLetter:
    dlq: str
    id: str
    fields: dict[str, str]

    @property
    def original(self) -> dict[str, str]:
        try:
            value = json.loads(self.fields.get("fields", "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def summary(self) -> str:
        failed_at = float(self.fields.get("failed_at", "0") or 0)
        when = datetime.datetime.fromtimestamp(failed_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        mongo_id = self.original.get("mongo_id", "?")
        error = " ".join(self.fields.get("error", "").split())
        return (
            f"{self.id}  {self.dlq}  {when}  mongo_id={mongo_id}  deliveries={self.fields.get('deliveries')}  {error}"
        )


def dlq_streams(ctx: Context, stage: int | None) -> list[str]:
    """The DLQs of ``stage`` (both when None) of every sync, each partition's."""
    each = [ctx.for_sync(sync).settings for sync in ctx.syncs]
    streams = {
        1: [group for one in each for group in one.stage1_groups()],
        2: [group for one in each for group in one.stage2_groups()],
    }
    chosen = streams[stage] if stage else streams[1] + streams[2]
    return [dlq_stream(stream) for stream, _group in chosen]


def context_of(ctx: Context, letter: DeadLetter) -> Context | None:
    """The context of the sync whose stage stream the letter came from; None when no sync uses that stream."""
    stream = base_name(letter.fields.get("stream", ""))
    for sync in ctx.syncs:
        one = ctx.for_sync(sync)
        if stream in (one.settings.stage1_stream, one.settings.stage2_stream):
            return one
    return None


def read_letters(ctx: Context, stage: int | None, ids: list[str] | None = None) -> list[DeadLetter]:
    letters = []
    for dlq in dlq_streams(ctx, stage):
        if ids is None:
            letters += [DeadLetter(dlq, entry_id, fields) for entry_id, fields in ctx.redis.xrange(dlq)]
            continue
        for entry_id in ids:
            letters += [
                DeadLetter(dlq, found_id, fields) for found_id, fields in ctx.redis.xrange(dlq, entry_id, entry_id)
            ]
    return letters


def list_command(ctx: Context, stage: int | None, as_json: bool) -> int:
    letters = read_letters(ctx, stage)
    if as_json:
        print(json.dumps([{"dlq": x.dlq, "id": x.id, **x.fields} for x in letters], indent=2, ensure_ascii=False))
        return EXIT_OK
    for letter in letters:
        print(letter.summary())
    print(count(len(letters), "dead letter"))
    return EXIT_OK


def show_command(ctx: Context, entry_id: str, stage: int | None) -> int:
    letters = read_letters(ctx, stage, [entry_id])
    if not letters:
        print(f"No dead letter {entry_id}.")
        return EXIT_FAILED
    for letter in letters:
        shown = {**letter.fields, "fields": letter.original or letter.fields.get("fields")}
        print(json.dumps({"dlq": letter.dlq, "id": letter.id, **shown}, indent=2, ensure_ascii=False))
    return EXIT_OK


def replay_command(ctx: Context, ids: list[str], replay_all: bool, stage: int | None) -> int:
    if not ids and not replay_all:
        raise ConfigurationError("Name the dead letters to replay (see `vecsync dlq list`), or pass --all.")
    letters = read_letters(ctx, stage, None if replay_all else ids)
    missing = sorted(set(ids) - {letter.id for letter in letters})
    if missing:
        raise VecsyncError(f"No such dead letter: {', '.join(missing)}. See `vecsync dlq list`.")
    contexts: dict[str, Context] = {}
    for letter in letters:
        of_letter = context_of(ctx, letter)
        if of_letter is None:
            raise VecsyncError(
                f"Dead letter {letter.id} came from stream {letter.fields.get('stream')!r}, which this pipeline "
                "does not use."
            )
        contexts[letter.id] = of_letter
    stage2 = [
        letter for letter in letters if base_name(letter.fields["stream"]) == contexts[letter.id].settings.stage2_stream
    ]
    # A stage 2 letter is replayed only by re-reading its document, which must belong to its sync's collection.
    elsewhere = [letter for letter in stage2 if _document_of(contexts[letter.id], letter) is None]
    # A stage 1 letter that names no document can never be processed: put back, it would only be dead-lettered again.
    nameless = [letter for letter in letters if letter not in stage2 and not _mongo_id(letter)]
    replayable = [letter for letter in letters if letter not in elsewhere and letter not in nameless]
    if not letters:
        print("Nothing to replay.")
        return EXIT_OK
    if replayable:
        targets = ", ".join(dict.fromkeys(contexts[letter.id].settings.stage1_stream for letter in replayable))
        ctx.confirm(
            f"Replay {count(len(replayable), 'dead letter')}. The document of each is re-read from MongoDB and its "
            f"current state published to {targets}, so a replay never brings back a state older "
            "than MongoDB's (a stage 2 letter is embedded again); each letter leaves its DLQ once replayed."
        )
        with progress(len(replayable), "letters", "replay") as bar:
            for letter in replayable:
                _replay(contexts[letter.id], letter)
                bar.update()
        print(f"Replayed {count(len(replayable), 'dead letter')}.")
    if elsewhere:
        names = ", ".join(f"{letter.id} ({letter.original.get('source') or 'no source'})" for letter in elsewhere)
        one = len(elsewhere) == 1
        streams = ", ".join(dict.fromkeys(contexts[letter.id].settings.stage2_stream for letter in elsewhere))
        sources = ", ".join(dict.fromkeys(contexts[letter.id].settings.source for letter in elsewhere))
        print(
            f"error: left {count(len(elsewhere), 'dead letter')} of {streams} in "
            f"{'its' if one else 'their'} DLQ, because {'it names' if one else 'they name'} no document of "
            f"{sources} to re-read from MongoDB: {names}. Replay {'it' if one else 'them'} with "
            f"MONGO_DATABASE and MONGO_COLLECTION set to {'its' if one else 'their'} collection, or purge "
            f"{'it' if one else 'them'}.",
            file=sys.stderr,
        )
    if nameless:
        names = ", ".join(letter.id for letter in nameless)
        one = len(nameless) == 1
        streams = ", ".join(dict.fromkeys(contexts[letter.id].settings.stage1_stream for letter in nameless))
        print(
            f"error: left {count(len(nameless), 'dead letter')} of {streams} in "
            f"{'its' if one else 'their'} DLQ, because {'it names' if one else 'they name'} no document (no "
            f"mongo_id), so no consumer can ever process {'it' if one else 'them'}: {names}. See what "
            f"{'it holds' if one else 'each holds'} with `vecsync dlq show ID`; `vecsync dlq purge --stage 1` "
            "deletes the letters of stage 1.",
            file=sys.stderr,
        )
    return EXIT_FAILED if elsewhere or nameless else EXIT_OK


def _mongo_id(letter: DeadLetter) -> str | None:
    mongo_id = letter.original.get("mongo_id")
    return mongo_id if isinstance(mongo_id, str) and mongo_id else None


def _document_of(ctx: Context, letter: DeadLetter) -> str | None:
    """The mongo_id of the letter's document, when it belongs to the collection this CLI reads."""
    mongo_id = _mongo_id(letter)
    if mongo_id is not None and letter.original.get("source") == ctx.settings.source:
        return mongo_id
    return None


def _replay(ctx: Context, letter: DeadLetter) -> None:
    remove: Callable[[redis.client.Pipeline], None] = lambda pipe: pipe.xdel(letter.dlq, letter.id)  # noqa: E731
    mongo_id = _document_of(ctx, letter)
    if mongo_id is not None:
        # Re-read: the letter's copy (and a stage 2 letter's version) may be older than the document's current
        # state, and a rebuild may have emptied the collection that would have fenced it.
        projection = source_projection(ctx.settings.text_fields, ctx.settings.payload_fields)
        publish_current_states(
            ctx.redis, ctx.settings, ctx.collection, ctx.settings.source, [mongo_id], projection=projection, also=remove
        )
        return
    # A stage 1 letter naming no document of this collection: put it back as it was, for its consumer to judge, into
    # the partition whose DLQ holds it (in its slot).
    put_back(ctx.redis, letter.fields["stream"], letter.original, also=remove)


def purge_command(ctx: Context, stage: int | None) -> int:
    streams = dlq_streams(ctx, stage)
    counts = {dlq: ctx.redis.xlen(dlq) for dlq in streams}
    total = sum(counts.values())
    if not total:
        print("No dead letters.")
        return EXIT_OK
    ctx.confirm(
        "Delete every dead letter: "
        + ", ".join(f"{count} in {dlq}" for dlq, count in counts.items())
        + ". They cannot be replayed afterwards."
    )
    for dlq in streams:
        ctx.redis.delete(dlq)
    print(f"Purged {count(total, 'dead letter')}.")
    return EXIT_OK
