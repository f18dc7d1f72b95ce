"""The stream consumer loop, written once for every stage.

A stage supplies a batch handler; this loop does the rest:

* reads batches through the consumer group (XREADGROUP with BLOCK), starting
  with the entries this consumer already held when it last stopped
  (vecsync.entry_reader);
* keeps the entries it is working on (vecsync.leases) for as long as its loop is
  alive, however long a dependency is down, and hands them back uncounted when
  it stops on request;
* reclaims entries that another consumer left idle longer than CLAIM_IDLE_MS
  (XAUTOCLAIM): that consumer died, or its loop stalled. A delivery is counted
  only then, or when a consumer failed on the entry, and entries delivered more
  than MAX_DELIVERIES times are dead-lettered (vecsync.dead_letters);
* acknowledges a batch in the same MULTI/EXEC as the commands the handler
  queued, so the output of a stage and the ack of its input commit together;
* retries transient failures (a dependency down, Redis full or read-only) with
  exponential backoff and jitter, forever: the backlog waits in the stream,
  nothing is dead-lettered (vecsync.redis_retry, vecsync.isolation);
* pauses on a misconfiguration (a ConfigurationError from the handler: every
  entry would fail alike), keeping its entries and trying them again with
  backoff, and says so in its log, ``paused`` (/healthz) and a metric, until
  the cause is gone (vecsync.misconfiguration_pause);
* isolates a failing batch entry by entry, dead-letters bad input at once, and
  leaves an entry that failed for an unknown reason pending for redelivery;
* handles a batch that holds redelivered entries one entry at a time, so an
  entry that kills its process is dead-lettered without its batch-mates;
* splits a batch that fails transiently while the stage's probe passes (the
  dependency serves other inputs), and dead-letters an entry that keeps
  failing alone, MAX_DELIVERIES times with the probe passing after each;
  during an outage the probe fails too, and nothing is dead-lettered
  (these three: vecsync.isolation);
* trims its stream as it goes (vecsync.retention), and pauses between batches
  while Redis is nearly full (vecsync.flow);
* stops on request after the batch in hand, and in drain mode returns once
  there is nothing left to read, so tests need no sleeps.

This module holds the loop itself; each part it calls on has its module, named above. The parts share one
ConsumerContext (vecsync.consumer_context) and log as ``vecsync.consumer``, the loop's name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from vecsync import metrics
from vecsync.batch import Batch, Entry, Handler
from vecsync.consumer_context import ConsumerContext
from vecsync.consumer_groups import LEAVE_GROUP_IF_IDLE, ensure_group
from vecsync.dead_letters import DeadLetters
from vecsync.entry_reader import EntryReader
from vecsync.flow import PAUSE_SHARE, RedisMemory, resume_share
from vecsync.flow import POLL_S as FLOW_POLL_S
from vecsync.isolation import Isolation
from vecsync.leases import Leases
from vecsync.liveness import Liveness
from vecsync.misconfiguration_pause import MisconfigurationPause
from vecsync.redis_errors import REDIS_UNAVAILABLE
from vecsync.redis_retry import RedisRetry
from vecsync.retention import trim
from vecsync.settings import ConsumerSettings
from vecsync.sync import DEFAULT_SYNC

log = logging.getLogger(__name__)

# A consumer trims its stream at least every this many entries it finished (see _trim_if_due).
TRIM_EVERY_MIN_ENTRIES = 1000


class StreamConsumer:
    """Runs ``handler`` over a stream through a consumer group. See the module docstring.

    ``probe`` is a known-good call to the dependency the handler uses (the embedding-api: one plain text): it
    passes while the dependency serves other inputs, and raises while it does not. Given one, the loop tells an
    outage (the probe fails too: retry, forever) from a batch whose inputs make the dependency fail with an error
    that looks transient (the probe passes: split the batch, and dead-letter an entry that keeps failing alone).

    ``sync`` names the sync whose entries ``stream`` holds, which the consumer's metrics carry as their ``sync``
    label beside ``stream`` (a definition's sync has its own streams, ``<stage stream>.<sync>``).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        stage: str,
        stream: str,
        group: str,
        handler: Handler,
        settings: ConsumerSettings,
        stopping: threading.Event | None = None,
        pause_when_redis_full: bool = False,
        partition: int = 0,
        probe: Callable[[], None] | None = None,
        sync: str = DEFAULT_SYNC,
    ) -> None:
        self.client = client
        self.probe = probe
        self.stage = stage
        self.partition = partition
        self.stream = stream
        self.group = group
        self.handler = handler
        self.settings = settings
        self.consumer = settings.consumer_name
        self.liveness = Liveness(settings.stall_timeout_s)
        self.context = ConsumerContext(
            client,
            stage=stage,
            stream=stream,
            group=group,
            consumer=self.consumer,
            settings=settings,
            stopping=stopping or threading.Event(),
            liveness=self.liveness,
            sync=sync,
        )
        self._labels = self.context.labels
        # A stage that writes the next stream pauses between batches while Redis is nearly full (vecsync.flow).
        self.pause_when_redis_full = pause_when_redis_full
        self.memory = RedisMemory(client)
        self._retention_yielded = False
        self.leases = Leases(
            client,
            stream=stream,
            group=group,
            consumer=self.consumer,
            claim_idle_ms=settings.claim_idle_ms,
            liveness=self.liveness,
        )
        self.misconfiguration = MisconfigurationPause(self.context)
        self._leave_group = client.register_script(LEAVE_GROUP_IF_IDLE)
        self.dead_letters = DeadLetters(self.context)
        self.redis_retry = RedisRetry(self.context)
        self.reader = EntryReader(self.context, self.dead_letters)
        self.isolation = Isolation(
            self.context,
            handle_and_ack=self._handle_and_ack,
            probe=probe,
            leases=self.leases,
            pause=self.misconfiguration,
            dead_letters=self.dead_letters,
            redis_retry=self.redis_retry,
        )
        self._last_trim = time.monotonic()
        self._finished_since_trim = 0

    @property
    def stopping(self) -> threading.Event:
        return self.context.stopping

    @stopping.setter
    def stopping(self, event: threading.Event) -> None:
        # A runner may stop several loops with one event, given before they run: every part reads it from the context.
        self.context.stopping = event

    @property
    def paused(self) -> str | None:
        """Why the consumer is paused on a misconfiguration, or None while it is not."""
        return self.misconfiguration.reason

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, drain: bool = False) -> None:
        """Consume until stopped; with ``drain``, until nothing is left to read or reclaim."""
        log.info("%s consuming %s as %s/%s", self.stage, self.stream, self.group, self.consumer)
        self.liveness.beat()
        self.leases.start()
        try:
            self.redis_retry.run(lambda: ensure_group(self.client, self.stream, self.group))
            while not self.stopping.is_set():
                self.liveness.beat()
                self._trim_if_due()
                if self.pause_when_redis_full:
                    self._pause_while_redis_full()
                entries = self.redis_retry.run(lambda: self.reader.next_entries(drain=drain))
                if entries is None:
                    if drain:
                        break
                    continue
                if entries:
                    self._process(entries)
        finally:
            self.leases.close()
        self._leave_group_if_idle()
        log.info("%s stopped", self.stage)

    def _leave_group_if_idle(self) -> None:
        """Remove this consumer from the group when it holds nothing, so restarts leave no stale names behind."""
        try:
            self._leave_group(keys=[self.stream], args=[self.group, self.consumer])
        except redis.RedisError as exc:  # best effort: a stale name costs nothing but a line in `vecsync status`
            log.info("%s could not leave group %s: %s", self.stage, self.group, exc)

    def _trim_if_due(self) -> None:
        """Trim every TRIM_INTERVAL_S, or sooner once this consumer finished a tenth of the retained count.

        By the clock alone, a fast stage would pile up TRIM_INTERVAL_S of acknowledged entries beyond retention,
        which on a big first sync is more memory than the retained entries themselves.
        """
        interval = self.settings.trim_interval_s
        if not interval:
            return
        keep_count = self.settings.retention_count(self.stream)
        since_trim_s = time.monotonic() - self._last_trim
        due = since_trim_s >= interval or self._finished_since_trim >= max(TRIM_EVERY_MIN_ENTRIES, keep_count // 10)
        if self._redis_share() > resume_share(self.settings.redis_memory_high_water):
            # Redis is filling up: the retention window (a convenience for rebuilds) yields to the pipeline.
            if not self._retention_yielded:
                log.warning(
                    "%s: Redis is close to REDIS_MEMORY_HIGH_WATER of its maxmemory; trimming every acknowledged "
                    "entry of %s, beyond the retention window, until it is below",
                    self.stage,
                    self.stream,
                )
            self._retention_yielded, keep_count, due = True, 0, due or since_trim_s >= FLOW_POLL_S
        else:
            self._retention_yielded = False
        if not due:
            return
        self._last_trim = time.monotonic()
        self._finished_since_trim = 0
        try:
            removed = trim(
                self.client, self.stream, keep_count=keep_count, keep_age_s=self.settings.stream_retention_age_s
            )
        except redis.RedisError as exc:
            log.warning("%s: could not trim %s: %s", self.stage, self.stream, exc)
            return
        if removed:
            log.info("%s trimmed %d acknowledged entries from %s", self.stage, removed, self.stream)

    def _redis_share(self) -> float:
        try:
            return self.memory.share()
        except REDIS_UNAVAILABLE:
            return 0.0  # the next command waits Redis out

    def _pause_while_redis_full(self) -> None:
        """Wait while Redis is above PAUSE_SHARE of its maxmemory, for the next stage to take entries out."""
        paused = False
        while not self.stopping.is_set() and self._redis_share() > PAUSE_SHARE:
            if not paused:
                log.warning(
                    "%s: Redis is above %d%% of its maxmemory; pausing before the next batch until the next stage "
                    "makes room",
                    self.stage,
                    PAUSE_SHARE * 100,
                )
                paused = True
            self.liveness.beat(waiting_s=FLOW_POLL_S)
            self._trim_if_due()
            self.stopping.wait(FLOW_POLL_S)

    # Handling ---------------------------------------------------------------

    def _process(self, entries: list[Entry]) -> None:
        """Handle ``entries`` until each is acknowledged, dead-lettered, left to be redelivered, or handed back."""
        ids = [entry.id for entry in entries]
        self.leases.hold(ids)
        try:
            unfinished = self.isolation.handle(entries)
            if unfinished:
                self._hand_back(unfinished)
        finally:
            self.leases.drop(ids)

    def _hand_back(self, entries: list[Entry]) -> None:
        """Stopping with unfinished entries: let any consumer take them now, without counting a delivery."""
        try:
            self.leases.release([entry.id for entry in entries])
        except redis.RedisError as exc:  # they are then taken over after CLAIM_IDLE_MS, which counts a delivery
            log.warning("%s: could not hand back %d entries: %s", self.stage, len(entries), exc)
            return
        log.info("%s: handed back %d unfinished entries to group %s", self.stage, len(entries), self.group)

    def _handle_and_ack(self, entries: list[Entry]) -> None:
        """One try of ``entries``: the handler, then the dead letters of what it rejected and every ack, in one
        MULTI/EXEC with what the handler queued."""
        started = time.perf_counter()
        tx = self.client.pipeline(transaction=True)
        batch = Batch(entries, tx, partition=self.partition)
        self.handler(batch)
        for entry in entries:
            if entry.id in batch.rejected:
                self.dead_letters.queue(tx, entry, batch.rejected[entry.id])
        tx.xack(self.stream, self.group, *(entry.id for entry in entries))
        tx.execute()
        for callback in batch.after_commit:
            callback()
        elapsed = time.perf_counter() - started
        if batch.rejected:
            for reason in batch.rejected.values():
                log.error("%s dead-lettered an entry: %s", self.stage, reason)
            metrics.MESSAGES_FAILED.labels(**self._labels, reason="invalid").inc(len(batch.rejected))
            metrics.MESSAGES_DEAD_LETTERED.labels(**self._labels).inc(len(batch.rejected))
        metrics.MESSAGES_PROCESSED.labels(**self._labels).inc(len(entries) - len(batch.rejected))
        self._finished_since_trim += len(entries)
        metrics.BATCH_SIZE.labels(**self._labels).observe(len(entries))
        metrics.BATCH_DURATION.labels(**self._labels).observe(elapsed)
