"""Arithmetic on stream entry ids: when an id was assigned, which id lies n entries on, how many entries follow one.

The reads go in chunks of READ_CHUNK entries, so that none of them builds a big reply in Redis's memory.
"""

from __future__ import annotations

import redis

# Entries read per XRANGE where only their ids or their number matter. A reply is built in Redis's memory before it is
# sent, and a stage 2 entry weighs about 3 KB: a read of thousands of them at once is megabytes on a Redis that
# flow control keeps close to its maxmemory.
READ_CHUNK = 100


def nth_entry_id(client: redis.Redis, stream: str, n: int, after: str | None = None) -> str | None:
    """The id of the ``n``-th entry (from 1) after the id ``after`` (from the start if None), or of the last one
    there is when fewer follow; None when none does."""
    entry_id, start = None, "-" if after is None else f"({after}"
    while n > 0:
        entries = client.xrange(stream, min=start, max="+", count=min(n, READ_CHUNK))
        if not entries:
            break
        entry_id, n, start = entries[-1][0], n - len(entries), f"({entries[-1][0]}"
    return entry_id


def count_after(client: redis.Redis, stream: str, after: str, limit: int) -> int:
    """How many entries follow the id ``after``, counting up to ``limit``."""
    counted, start = 0, f"({after}"
    while counted < limit:
        entries = client.xrange(stream, min=start, max="+", count=min(limit - counted, READ_CHUNK))
        if not entries:
            break
        counted, start = counted + len(entries), f"({entries[-1][0]}"
    return counted


def entry_time(entry_id: str) -> float:
    """Unix time, in seconds, at which an entry id was assigned."""
    return int(entry_id.split("-", 1)[0]) / 1000.0
