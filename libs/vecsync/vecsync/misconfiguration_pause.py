"""A consumer's pause on a misconfiguration: it keeps its entries, and says why it waits until the cause is gone.

A vector size other than EMBEDDING_DIM, a URL that answers 404, a refused key or a Redis user without a command it
needs fail every entry alike; dead-lettering them would move the whole backlog (on a first sync, everything) into a
dead-letter stream, which nothing trims. The consumer keeps its entries (its loop keeps coming round, so its
leases hold) and tries them again with backoff (vecsync.isolation), so it resumes by itself once the dependency or
the setting is right. Meanwhile it says so in its log, in /healthz (``reason``) and in vecsync_consumer_paused.
"""

from __future__ import annotations

import logging

from vecsync import metrics
from vecsync.consumer_context import ConsumerContext
from vecsync.errors import ConfigurationError

# The consumer loop's lines, under the logger name they have always had.
log = logging.getLogger("vecsync.consumer")


class MisconfigurationPause:
    """Whether, and why, one consumer is paused on a misconfiguration."""

    def __init__(self, context: ConsumerContext) -> None:
        self.context = context
        # Why the consumer is paused, or None while it is not.
        self.reason: str | None = None
        metrics.CONSUMER_PAUSED.labels(**context.labels).set(0)

    def pause(self, exc: ConfigurationError, count: int) -> None:
        """Hold on to the batch of ``count`` entries while a setting contradicts a dependency: none is at fault, none
        is dead-lettered."""
        metrics.MESSAGES_FAILED.labels(**self.context.labels, reason="misconfigured").inc(count)
        reason = str(exc)
        if reason != self.reason:
            log.error(
                "%s paused: %s Nothing is dead-lettered: it keeps its %d entries, tries them again with backoff, and "
                "resumes by itself once the cause is gone.",
                self.context.stage,
                reason,
                count,
            )
        self.reason = reason
        metrics.CONSUMER_PAUSED.labels(**self.context.labels).set(1)

    def resume(self) -> None:
        """The batch went through: end the pause, if there was one."""
        if self.reason is None:
            return
        log.warning(
            "%s resumed: the batch it was paused on went through (%s was the cause)", self.context.stage, self.reason
        )
        self.reason = None
        metrics.CONSUMER_PAUSED.labels(**self.context.labels).set(0)
