"""The figures of a stage's streams that operators and flow control read: length, lag, pending, dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from vecsync.constants import dlq_stream
from vecsync.entry_ids import count_after, entry_time

# Where Redis reports no lag, it is counted, up to this many entries.
LAG_COUNT_LIMIT = 100_000


@dataclass
class ConsumerInfo:
    name: str
    pending: int
    idle_s: float


@dataclass
class StreamStats:
    """What an operator needs to know about one stage."""

    stream: str
    group: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_age_s: float
    dlq_length: int
    # Since the oldest pending entry was last delivered: large only when no consumer works on it.
    oldest_pending_idle_s: float = 0.0
    consumers: list[ConsumerInfo] = field(default_factory=list)
    group_exists: bool = True
    # With several partitions: each partition's own figures, of which the fields above are the totals.
    partitions: list[StreamStats] = field(default_factory=list)

    @property
    def drained(self) -> bool:
        """Nothing unread and nothing pending (an unknown lag is not taken for none)."""
        return self.lag == 0 and self.pending == 0

    def as_dict(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        data["consumers"] = [consumer.__dict__ for consumer in self.consumers]
        if self.partitions:
            data["partitions"] = [partition.as_dict() for partition in self.partitions]
        else:
            del data["partitions"]
        return data


def stage_stats(
    client: redis.Redis, groups: list[tuple[str, str]], stream: str, *, with_consumers: bool = False
) -> StreamStats:
    """One stage's figures over its partitions ``groups`` ((stream, group) each), named after its base ``stream``."""
    if len(groups) == 1:
        return stream_stats(client, *groups[0], with_consumers=with_consumers)
    parts = [stream_stats(client, name, group, with_consumers=with_consumers) for name, group in groups]
    lags = [part.lag for part in parts]
    consumers: dict[str, ConsumerInfo] = {}
    for part in parts:
        for consumer in part.consumers:
            known = consumers.setdefault(consumer.name, ConsumerInfo(consumer.name, 0, consumer.idle_s))
            known.pending += consumer.pending
            known.idle_s = min(known.idle_s, consumer.idle_s)
    return StreamStats(
        stream=stream,
        group=groups[0][1],
        length=sum(part.length for part in parts),
        lag=None if None in lags else sum(lag for lag in lags if lag is not None),
        pending=sum(part.pending for part in parts),
        oldest_pending_age_s=max(part.oldest_pending_age_s for part in parts),
        dlq_length=sum(part.dlq_length for part in parts),
        oldest_pending_idle_s=max(part.oldest_pending_idle_s for part in parts),
        consumers=list(consumers.values()),
        group_exists=all(part.group_exists for part in parts),
        partitions=parts,
    )


def stream_stats(client: redis.Redis, stream: str, group: str, *, with_consumers: bool = False) -> StreamStats:
    length = client.xlen(stream)
    dlq_length = client.xlen(dlq_stream(stream))
    group_info = _group_info(client, stream, group)
    if group_info is None:
        # No group yet: nothing has been delivered, so the whole stream is lag.
        return StreamStats(stream, group, length, length, 0, 0.0, dlq_length, group_exists=False)
    summary = client.xpending(stream, group)
    pending = int(summary["pending"])
    oldest_age = max(0.0, time.time() - entry_time(summary["min"])) if pending else 0.0
    stats = StreamStats(stream, group, length, _lag(client, stream, group_info), pending, oldest_age, dlq_length)
    if pending:
        oldest = client.xpending_range(stream, group, min="-", max="+", count=1)
        stats.oldest_pending_idle_s = int(oldest[0]["time_since_delivered"]) / 1000.0 if oldest else 0.0
    if with_consumers:
        stats.consumers = [
            ConsumerInfo(c["name"], int(c["pending"]), int(c["idle"]) / 1000.0)
            for c in client.xinfo_consumers(stream, group)
        ]
    return stats


def unprocessed(client: redis.Redis, stream: str, group: str) -> int:
    """The entries of ``stream`` that ``group`` has not finished: not yet delivered (lag) plus pending."""
    info = _group_info(client, stream, group)
    if info is None:
        return int(client.xlen(stream))  # no consumer has come yet: every entry waits
    return (_lag(client, stream, info) or 0) + int(info["pending"])


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream
        return None
    for info in groups:
        if info["name"] == group:
            return dict(info)
    return None


def _lag(client: redis.Redis, stream: str, group_info: dict[str, Any]) -> int | None:
    # A group that has read up to the stream's last entry has no lag, whatever Redis's counters say: after
    # entries were XDELeted unread (by an operator), Redis keeps reporting them as lag.
    if group_info["last-delivered-id"] == client.xinfo_stream(stream)["last-generated-id"]:
        return 0
    lag = group_info.get("lag")
    if lag is not None:
        return int(lag)
    # Redis reports no lag after some deletions, and Redis 6.2 never does: count what is
    # past the last delivered id instead, bounded so that a huge backlog stays cheap.
    return count_after(client, stream, group_info["last-delivered-id"], LAG_COUNT_LIMIT)
