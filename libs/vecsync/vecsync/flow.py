"""Flow control: whatever writes stage 1 waits while the pipeline holds too much it has not processed yet.

Redis must run with `noeviction`, so a Redis that fills up refuses writes. Every change enters the pipeline through
stage 1, and each stage 1 entry makes at most one stage 2 entry, so bounding the entries not yet processed in both
stages together (unread plus pending) bounds what the streams hold beyond their retention. The producer and
`vecsync resync` check the bound before each batch they read from MongoDB; what they have not read yet waits in
MongoDB (the collection, or the oplog for the change stream), not in Redis.

A count cannot know how big entries are, so where Redis runs with maxmemory its memory is the second bound: above
REDIS_MEMORY_HIGH_WATER of it, writers of stage 1 wait, and consumers trim every acknowledged entry (the retention
window yields: it is a convenience for rebuilds, a full Redis stops everything). The embedder-workers, whose stage 2
entries are the biggest, pause between batches above PAUSE_SHARE, so that Redis keeps room for the entries in
flight and never has to refuse a write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from vecsync.liveness import Liveness
from vecsync.redis_client import memory_infos, memory_share
from vecsync.settings import CommonSettings, FlowControlSettings
from vecsync.stream_stats import unprocessed

log = logging.getLogger(__name__)

# How often a waiting writer measures the backlog again.
POLL_S = 1.0
# Above this share of maxmemory, the embedder-workers wait between batches for the upserters to make room.
PAUSE_SHARE = 0.9
# Writers of stage 1 read again below this part of REDIS_MEMORY_HIGH_WATER, and consumers trim every acknowledged
# entry above it: retention must yield before the writers can go on, or they would wait on each other for good.
RESUME_FRACTION = 0.9


def resume_share(high_water: float) -> float:
    """The share of maxmemory below which writers of stage 1 read again, and above which retention yields."""
    return high_water * RESUME_FRACTION


class RedisMemory:
    """Redis's used memory as a share of its maxmemory (0 when it has none).

    Read afresh at every call (INFO memory, one cheap round trip per batch): a stage writes megabytes a second
    on a big sync, so a reading even a second old lets it run past the mark.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def share(self) -> float:
        """The share of the fullest node: on a Redis Cluster, each master refuses writes on its own once full."""
        return max(memory_share(info) for info in memory_infos(self.client))


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
        on_waited: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.max_backlog = settings.producer_max_backlog
        self.resume_backlog = settings.producer_resume_backlog or 0
        self.memory = RedisMemory(client)
        self.high_water = stages.redis_memory_high_water
        self.groups = stages.stage1_groups() + stages.stage2_groups()
        self.stopping = stopping
        self.liveness = liveness
        self.on_wait = on_wait
        # Told the seconds of each wait once it ends (the producer counts them in a metric).
        self.on_waited = on_waited
        self.last_backlog = 0
        # Monotonic time since which the writer waits; None while it does not.
        self.throttled_since: float | None = None

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
        """Return at once while there is room; else once the backlog and Redis's memory are down again (or stopping).

        Room: at most PRODUCER_MAX_BACKLOG unprocessed entries, and Redis below REDIS_MEMORY_HIGH_WATER of its
        maxmemory. Down again: at most PRODUCER_RESUME_BACKLOG, and at most nine tenths of the high water.
        """
        backlog, share = self.backlog(), self.memory.share()
        if backlog <= self.max_backlog and share <= self.high_water:
            return
        log.info(
            "The pipeline holds %d unprocessed entries (PRODUCER_MAX_BACKLOG=%d) and Redis uses %.0f%% of its "
            "maxmemory (REDIS_MEMORY_HIGH_WATER=%.0f%%): waiting for the stages before reading MongoDB again",
            backlog,
            self.max_backlog,
            share * 100,
            self.high_water * 100,
        )
        if self.on_wait is not None:
            self.on_wait(backlog)
        self.throttled_since = started = time.monotonic()
        try:
            while backlog > self.resume_backlog or share > resume_share(self.high_water):
                if self.liveness is not None:
                    self.liveness.beat(waiting_s=POLL_S)
                if self.stopping.wait(POLL_S):
                    return
                backlog, share = self.backlog(), self.memory.share()
        finally:
            self.throttled_since = None
            if self.on_waited is not None:
                self.on_waited(time.monotonic() - started)
        log.info("The backlog is down to %d and Redis to %.0f%%; reading MongoDB again", backlog, share * 100)
