"""Waiting Redis out: a consumer loop's Redis operations run again, with backoff, while Redis is unreachable, full
or read-only, and a consumer group that vanished is created again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis

from vecsync import metrics
from vecsync.backoff import Backoff
from vecsync.consumer_context import ConsumerContext
from vecsync.consumer_groups import ensure_group
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE, is_unblocked, refusal_reason

# The consumer loop's lines, under the logger name they have always had.
log = logging.getLogger("vecsync.consumer")

T = TypeVar("T")


def count_refusal(stage: str, exc: Exception) -> None:
    """Count ``exc`` in vecsync_redis_refused_total if it is Redis refusing a command (full or read-only)."""
    if isinstance(exc, REDIS_REFUSALS):
        metrics.REDIS_REFUSED.labels(stage=stage, reason=refusal_reason(exc)).inc()


class RedisRetry:
    """Runs the Redis operations of one consumer loop until they go through, or the loop is asked to stop."""

    def __init__(self, context: ConsumerContext) -> None:
        self.context = context

    def run(self, operation: Callable[[], T]) -> T | None:
        """Run a Redis operation, backing off while Redis is unreachable, full or read-only; None once stopping."""
        context = self.context
        backoff = Backoff(context.settings.backoff_initial_s, context.settings.backoff_max_s, context.liveness)
        while not context.stopping.is_set():
            context.liveness.beat()
            try:
                return operation()
            except REDIS_UNAVAILABLE as exc:
                log.warning("%s: Redis unavailable (%s); retrying", context.stage, exc)
            except REDIS_REFUSALS as exc:
                count_refusal(context.stage, exc)
                log.warning("%s: %s; retrying", context.stage, exc)
            except redis.ResponseError as exc:
                if is_unblocked(exc):
                    log.warning("%s: %s; reading again", context.stage, exc)
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group vanished (Redis lost its data, or an operator deleted it): recreate it.
                log.error(
                    "%s: consumer group %s is missing on %s; recreating it",
                    context.stage,
                    context.group,
                    context.stream,
                )
                ensure_group(context.client, context.stream, context.group)
                continue
            if not backoff.wait(context.stopping):
                return None
        return None
