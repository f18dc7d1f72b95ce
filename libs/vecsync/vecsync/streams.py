"""Redis connection and stream helpers shared by the stages and the operator CLI."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from vecsync.constants import dlq_stream

# redact_url was defined here before vecsync.redaction held every redaction: still importable from here.
from vecsync.redaction import redact, redact_url  # noqa: F401

# Redis refusing a command without being down: full (maxmemory with noeviction) or read-only (a replica, as right
# after a failover). Both pass; every stage waits them out as it waits out an outage, and never dead-letters for them.
REDIS_REFUSALS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)


def refusal_reason(exc: Exception) -> str:
    """The ``reason`` label of a refusal: ``oom`` or ``readonly``."""
    return "oom" if isinstance(exc, redis.exceptions.OutOfMemoryError) else "readonly"


# Redis, or a part of a Redis Cluster, out of reach for now: a node down, a failover under way (the cluster client
# follows redirections itself, and raises these once its own retries are spent). Every stage waits them out.
REDIS_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,
    redis.exceptions.SlotNotCoveredError,
)


def is_unblocked(exc: redis.ResponseError) -> bool:
    """Whether Redis ended a blocking read because its node stopped being a master (a failover): read again."""
    return str(exc).startswith("UNBLOCKED")


def connect(url: str, *, cluster: bool = False) -> redis.Redis:
    """A Redis client that returns str, with timeouts long enough for blocking stream reads.

    With ``cluster``, a Redis Cluster client that discovers the cluster from the node ``url`` names and follows its
    redirections and failovers. It offers the same commands wherever the keys of one command (or of one
    transaction, or one script) share a hash slot, as every partition's keys do (vecsync.partitions).

    Bytes that are not UTF-8 (an entry written by hand) are replaced rather than
    raised on, so one bad entry can be dead-lettered instead of stopping every read.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "replace",
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "health_check_interval": 30,
    }
    if cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url, **options))
    return redis.Redis.from_url(url, **options)


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, redis.RedisCluster)


def node_of(client: redis.Redis, key: str) -> tuple[str, redis.Redis]:
    """The name of the node that serves ``key`` (its master, on a Redis Cluster) and a plain client of it alone."""
    if not is_cluster(client):
        return "", client
    cluster = cast(redis.RedisCluster, client)
    node = cluster.get_node_from_key(key)
    return node.name, cluster.get_redis_connection(node)


def wait_for_replica(client: redis.Redis, key: str, value: str, timeout_ms: int) -> bool:
    """Whether every write the master of ``key`` acknowledged so far reached one of its replicas within
    ``timeout_ms``: SET ``key`` ``value``, then WAIT for one replica, on one connection.

    WAIT counts from the last write of the connection it runs on, and a pooled client gives no command the
    connection of the one before: so it follows a write of its own, whose place in the master's replication stream
    comes after every write acknowledged before it. ``key`` must be in a slot of that master.
    """
    _name, node = node_of(client, key)
    pipe = node.pipeline(transaction=False)
    pipe.set(key, value)
    pipe.execute_command("WAIT", 1, timeout_ms)
    _stored, replicas = pipe.execute()
    return int(replicas) >= 1


def memory_infos(client: redis.Redis) -> list[dict[str, Any]]:
    """INFO memory of Redis, or of every master of a Redis Cluster."""
    if is_cluster(client):
        cluster = cast(redis.RedisCluster, client)
        replies = cluster.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
        return [dict(reply) for reply in cast(dict[str, Any], replies).values()]
    return [dict(client.info("memory"))]


def memory_share(info: dict[str, Any]) -> float:
    """used_memory as a share of maxmemory, from INFO memory; 0 without a maxmemory."""
    limit = int(info.get("maxmemory", 0))
    return int(info["used_memory"]) / limit if limit else 0.0


# Entries read per XRANGE where only their ids or their number matter. A reply is built in Redis's memory before it is
# sent, and a stage 2 entry weighs about 3 KB: a read of thousands of them at once is megabytes on a Redis that
# flow control keeps close to its maxmemory.
READ_CHUNK = 100
# Where Redis reports no lag, it is counted, up to this many entries.
LAG_COUNT_LIMIT = 100_000


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


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream itself) reading from the start, if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def entry_time(entry_id: str) -> float:
    """Unix time, in seconds, at which an entry id was assigned."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


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


def dead_letter_fields(
    *, stream: str, group: str, entry_id: str, fields: dict[str, str], error: str, deliveries: int, consumer: str
) -> dict[str, str]:
    """The fields of a dead-letter entry: everything needed to understand and replay it.

    The reason is redacted (vecsync.redaction): it is stored in Redis and shown by `vecsync dlq`, past every log
    formatter.
    """
    return {
        "stream": stream,
        "group": group,
        "entry_id": entry_id,
        "fields": json.dumps(fields, ensure_ascii=False),
        "error": redact(error),
        "deliveries": str(deliveries),
        "consumer": consumer,
        "failed_at": repr(time.time()),
    }
