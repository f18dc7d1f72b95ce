"""Safe trimming of the streams.

An entry is removed only when every consumer group has acknowledged it
(it is older than each group's oldest pending entry and last delivered entry)
and it lies outside the retention window: the newest STREAM_RETENTION_COUNT
entries and the entries younger than STREAM_RETENTION_AGE_S are always kept.
Trimming uses XTRIM MINID with an exact bound, never an approximate or blind
MAXLEN, which could drop entries that were never processed.
"""

from __future__ import annotations

import time

import redis

from vecsync.constants import TRIMMED_KEY_PREFIX
from vecsync.entry_ids import nth_entry_id
from vecsync.messages import parse_version

# At most this many entries are removed per call, so one call stays cheap on a huge backlog.
MAX_TRIM_PER_CALL = 10_000


def trim_bound(client: redis.Redis, stream: str, *, keep_count: int, keep_age_s: float) -> str | None:
    """The id below which entries may be removed, or None when nothing may be."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None  # no such stream
    if not groups:
        return None  # nobody has acknowledged anything yet
    bounds: list[str] = []
    for group in groups:
        # Everything up to the last delivered entry was delivered; what is not pending was acknowledged.
        bounds.append(_successor(group["last-delivered-id"]))
        pending = client.xpending(stream, group["name"])
        if pending["pending"]:
            bounds.append(pending["min"])
    length = client.xlen(stream)
    excess = length - keep_count
    if excess <= 0:
        return None
    # The first entry of the retention window: entries before it are beyond the count window.
    head = nth_entry_id(client, stream, min(excess, MAX_TRIM_PER_CALL) + 1)
    if head is None:
        return None
    bounds.append(head)
    if keep_age_s > 0:
        bounds.append(f"{int((time.time() - keep_age_s) * 1000)}-0")
    bound = min(bounds, key=parse_version)
    return None if parse_version(bound) <= (0, 0) else bound


def _successor(entry_id: str) -> str:
    millis, seq = parse_version(entry_id)
    return f"{millis}-{seq + 1}"


def trim(client: redis.Redis, stream: str, *, keep_count: int, keep_age_s: float) -> int:
    """Remove what may safely be removed from ``stream``; returns the number of entries removed."""
    bound = trim_bound(client, stream, keep_count=keep_count, keep_age_s=keep_age_s)
    return 0 if bound is None else trim_to(client, stream, bound)


def trim_to(client: redis.Redis, stream: str, bound: str) -> int:
    """Remove the entries before ``bound``, a bound from trim_bound (acks only move forward, so it stays safe)."""
    removed = int(client.xtrim(stream, minid=bound, approximate=False))
    if removed:
        # Remembered so that `vecsync rebuild` knows the stream no longer holds every change.
        client.set(TRIMMED_KEY_PREFIX + stream, bound)
    return removed
