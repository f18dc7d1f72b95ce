"""Which Redis errors every stage waits out instead of failing on: refusals, unavailability, unblocked reads, and a
command the service's ACL user may not run."""

from __future__ import annotations

import redis

from vecsync.errors import ConfigurationError

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


def acl_refusal(exc: redis.exceptions.NoPermissionError) -> ConfigurationError:
    """A command or key the service's Redis user may not use (NOPERM), as the misconfiguration it is: every entry
    would fail alike, so the stage pauses with its entries (vecsync.misconfiguration_pause) until the user may."""
    return ConfigurationError(
        f"Redis refused a command to this service's user ({exc}). Give the user the commands and keys that "
        "docs/security.md lists for this service."
    )
