"""Reaching Redis: connecting (to one server or a Redis Cluster), finding a key's node, waiting for its replica,
and reading its memory use."""

from __future__ import annotations

from typing import Any, cast

import redis


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
