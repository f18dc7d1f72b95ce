"""Flow control: whatever writes stage 1 waits while the pipeline holds too much it has not processed yet.

Redis must run with `noeviction`, so a Redis that fills up refuses writes. Every change enters the pipeline through
stage 1, and each stage 1 entry makes at most one stage 2 entry, so bounding the entries not yet processed in both
stages together (unread plus pending) bounds what the streams hold beyond their retention. The producer and
`vecsync resync` check the bound before each batch they read from MongoDB; what they have not read yet waits in
MongoDB (the collection, or the oplog for the change stream), not in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from vecsync.liveness import Liveness
from vecsync.settings import CommonSettings, FlowControlSettings
from vecsync.streams import unprocessed

log = logging.getLogger(__name__)

# How often a waiting writer measures the backlog again.
POLL_S = 1.0


class FlowControl:
    """Waits, before each batch a writer of stage 1 reads, until the pipeline has room for it."""

    def __init__(
        self,
        client: redis.Redis,
        settings: FlowControlSettings,
        stages: CommonSettings,
        stopping: threading.Event,
        *,
        liveness: Liveness | None = None,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.max_backlog = settings.producer_max_backlog
        self.resume_backlog = settings.producer_resume_backlog or 0
        self.groups = [(stages.stage1_stream, stages.stage1_group), (stages.stage2_stream, stages.stage2_group)]
        self.stopping = stopping
        self.liveness = liveness
        self.on_wait = on_wait
        self.last_backlog = 0
        # Monotonic time since which the writer waits; None while it does not.
        self.throttled_since: float | None = None
        self.throttled_s_total = 0.0

    @property
    def throttled(self) -> bool:
        return self.throttled_since is not None

    def throttled_for_s(self) -> float:
        since = self.throttled_since
        return 0.0 if since is None else time.monotonic() - since

    def backlog(self) -> int:
        """Entries not yet processed, both stages together."""
        self.last_backlog = sum(unprocessed(self.client, stream, group) for stream, group in self.groups)
        return self.last_backlog

    def wait_for_room(self) -> None:
        """Return at once below PRODUCER_MAX_BACKLOG; above it, once below PRODUCER_RESUME_BACKLOG (or stopping)."""
        backlog = self.backlog()
        if backlog <= self.max_backlog:
            return
        log.info(
            "The pipeline holds %d unprocessed entries (PRODUCER_MAX_BACKLOG=%d): reading MongoDB again below %d",
            backlog,
            self.max_backlog,
            self.resume_backlog,
        )
        if self.on_wait is not None:
            self.on_wait(backlog)
        self.throttled_since = started = time.monotonic()
        try:
            while backlog >= self.resume_backlog:
                if self.liveness is not None:
                    self.liveness.beat(waiting_s=POLL_S)
                if self.stopping.wait(POLL_S):
                    return
                backlog = self.backlog()
        finally:
            self.throttled_since = None
            self.throttled_s_total += time.monotonic() - started
        log.info("The pipeline's backlog is down to %d; reading MongoDB again", backlog)
