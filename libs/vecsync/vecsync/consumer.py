"""The stream consumer loop, written once for every stage.

A stage supplies a batch handler; this loop does the rest:

* reads batches through the consumer group (XREADGROUP with BLOCK), starting
  with the entries this consumer already held when it last stopped;
* keeps the entries it is working on (vecsync.leases) for as long as its loop is
  alive, however long a dependency is down, and hands them back uncounted when
  it stops on request;
* reclaims entries that another consumer left idle longer than CLAIM_IDLE_MS
  (XAUTOCLAIM): that consumer died, or its loop stalled. A delivery is counted
  only then, or when a consumer failed on the entry, and entries delivered more
  than MAX_DELIVERIES times are dead-lettered;
* acknowledges a batch in the same MULTI/EXEC as the commands the handler
  queued, so the output of a stage and the ack of its input commit together;
* retries transient failures (a dependency down, Redis full or read-only) with
  exponential backoff and jitter, forever: the backlog waits in the stream,
  nothing is dead-lettered;
* pauses on a misconfiguration (a ConfigurationError from the handler: every
  entry would fail alike), keeping its entries and trying them again with
  backoff, and says so in its log, ``paused`` (/healthz) and a metric, until
  the cause is gone;
* isolates a failing batch entry by entry, dead-letters bad input at once, and
  leaves an entry that failed for an unknown reason pending for redelivery;
* handles a batch that holds redelivered entries one entry at a time, so an
  entry that kills its process is dead-lettered without its batch-mates;
* splits a batch that fails transiently while the stage's probe passes (the
  dependency serves other inputs), and dead-letters an entry that keeps
  failing alone, MAX_DELIVERIES times with the probe passing after each;
  during an outage the probe fails too, and nothing is dead-lettered;
* stops on request after the batch in hand, and in drain mode returns once
  there is nothing left to read, so tests need no sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import redis

from vecsync import metrics
from vecsync.backoff import Backoff
from vecsync.constants import dlq_stream
from vecsync.consumer_groups import ensure_group
from vecsync.dead_letters import dead_letter_fields
from vecsync.errors import ConfigurationError, PermanentError, TransientError
from vecsync.flow import PAUSE_SHARE, RedisMemory, resume_share
from vecsync.flow import POLL_S as FLOW_POLL_S
from vecsync.leases import Leases
from vecsync.liveness import Liveness
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE, is_unblocked, refusal_reason
from vecsync.retention import trim
from vecsync.settings import ConsumerSettings

log = logging.getLogger(__name__)

# A consumer trims its stream at least every this many entries it finished (see _trim_if_due).
TRIM_EVERY_MIN_ENTRIES = 1000

# Removes a consumer from its group only if it holds no pending entry, in one step: between a separate check and
# XGROUP DELCONSUMER, a consumer of the same name (a restart) could take entries, and DELCONSUMER would discard them
# from the group's pending list, never to be processed. One key, so it runs on a Redis Cluster too. KEYS[1]: the
# stream. ARGV: group, consumer. Returns 1 when the consumer left (or was not there), 0 when it holds entries.
_LEAVE_GROUP = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Errors that mean "try again later": Redis unreachable, full or read-only, or a dependency the handler reported.
RETRYABLE = (TransientError, *REDIS_UNAVAILABLE, *REDIS_REFUSALS)


@dataclass
class Entry:
    id: str
    fields: dict[str, str]
    deliveries: int = 1


@dataclass
class Batch:
    """What a handler gets: the entries, and a transaction that commits with their acks."""

    entries: list[Entry]
    tx: redis.client.Pipeline
    rejected: dict[str, str] = field(default_factory=dict)
    # The partition the entries come from (vecsync.partitions): whatever the handler queues on ``tx`` must use this
    # partition's keys, so that the transaction stays in one hash slot of a Redis Cluster.
    partition: int = 0

    def reject(self, entry: Entry, reason: str) -> None:
        """Send ``entry`` to the dead-letter stream with ``reason`` instead of processing it."""
        self.rejected[entry.id] = reason


Handler = Callable[[Batch], None]
T = TypeVar("T")


class StreamConsumer:
    """Runs ``handler`` over a stream through a consumer group. See the module docstring.

    ``probe`` is a known-good call to the dependency the handler uses (the embedding-api: one plain text): it
    passes while the dependency serves other inputs, and raises while it does not. Given one, the loop tells an
    outage (the probe fails too: retry, forever) from a batch whose inputs make the dependency fail with an error
    that looks transient (the probe passes: split the batch, and dead-letter an entry that keeps failing alone).
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
        self.stopping = stopping or threading.Event()
        self._labels = {"stage": stage, "stream": stream, "group": group}
        # A stage that writes the next stream pauses between batches while Redis is nearly full (vecsync.flow).
        self.pause_when_redis_full = pause_when_redis_full
        self.memory = RedisMemory(client)
        self._retention_yielded = False
        self.liveness = Liveness(settings.stall_timeout_s)
        self.leases = Leases(
            client,
            stream=stream,
            group=group,
            consumer=self.consumer,
            claim_idle_ms=settings.claim_idle_ms,
            liveness=self.liveness,
        )
        # Why the consumer is paused on a misconfiguration, or None while it is not (see _pause).
        self.paused: str | None = None
        metrics.CONSUMER_PAUSED.labels(**self._labels).set(0)
        self._leave_group = client.register_script(_LEAVE_GROUP)
        self._reading_own_history = True
        self._last_claim = 0.0
        # Where the next XAUTOCLAIM scan of the pending list starts (see _claim_idle).
        self._claim_cursor = "0-0"
        self._last_trim = time.monotonic()
        self._finished_since_trim = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, drain: bool = False) -> None:
        """Consume until stopped; with ``drain``, until nothing is left to read or reclaim."""
        log.info("%s consuming %s as %s/%s", self.stage, self.stream, self.group, self.consumer)
        self.liveness.beat()
        self.leases.start()
        try:
            self._with_retry(lambda: ensure_group(self.client, self.stream, self.group))
            while not self.stopping.is_set():
                self.liveness.beat()
                self._trim_if_due()
                if self.pause_when_redis_full:
                    self._pause_while_redis_full()
                entries = self._with_retry(lambda: self._next_entries(drain=drain))
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

    # Reading ----------------------------------------------------------------

    def _next_entries(self, *, drain: bool) -> list[Entry] | None:
        """The next batch to handle; [] when there is nothing to do yet, None when drained."""
        if self._reading_own_history:
            # After a restart, first finish what this consumer had been given before.
            entries = self._reread_own_pending()
            if entries:
                return entries
            self._reading_own_history = False
        if self._claim_due(drain):
            claimed = self._claim_idle()
            if claimed:
                return claimed
        entries = self._read(">", block=None if drain else self.settings.block_ms)
        if entries:
            return self._linger(entries)
        if drain:
            # Draining means nothing left behind: retry this consumer's failed entries now
            # instead of after CLAIM_IDLE_MS. Each retry counts as a delivery, so it ends.
            return self._claim_idle() or self._reread_own_pending() or None
        return []

    def _linger(self, entries: list[Entry]) -> list[Entry]:
        """Top up a partial batch with what arrives within LINGER_MS."""
        missing = self.settings.batch_size - len(entries)
        if missing <= 0 or not self.settings.linger_ms or self.stopping.wait(self.settings.linger_ms / 1000):
            return entries
        return entries + self._read(">", block=None, count=missing)

    def _reread_own_pending(self) -> list[Entry]:
        entries = self._read("0", block=None)
        if not entries:
            return []
        metrics.MESSAGES_RECLAIMED.labels(**self._labels).inc(len(entries))
        return self._set_deliveries(entries)

    def _read(self, start: str, block: int | None, count: int | None = None) -> list[Entry]:
        response = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count or self.settings.batch_size, block=block
        )
        entries: list[Entry] = []
        for _stream, messages in cast(list[tuple[str, Any]], response or []):
            entries.extend(self._entries(messages))
        return entries

    def _claim_due(self, drain: bool) -> bool:
        interval = min(self.settings.claim_idle_ms / 1000.0, 5.0)
        return drain or time.monotonic() - self._last_claim >= interval

    def _claim_idle(self) -> list[Entry]:
        """Take over entries idle longer than CLAIM_IDLE_MS, following XAUTOCLAIM's cursor round the pending list.

        Each XAUTOCLAIM looks at no more than ten times COUNT pending entries. Started at 0-0 every time, it would
        only ever look at the oldest ones: with many entries held by live consumers ahead of it, an idle entry
        further along would never be reclaimed. So the scan goes on from the cursor each call returns, until it
        claims something or has come round the whole list once, and the next call carries on where this one
        stopped, so the entries at the front do not always come first.
        """
        self._last_claim = time.monotonic()
        from_the_start = self._claim_cursor == "0-0"
        while True:
            response = self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=self._claim_cursor,
                count=self.settings.batch_size,
            )
            self._claim_cursor = str(response[0])
            entries = self._entries(response[1])
            if entries:
                break
            if self._claim_cursor == "0-0":
                if from_the_start:
                    return []  # came round the whole list: nothing is idle
                from_the_start = True  # wrapped: once more from the front, which covers where this round began
        log.warning(
            "%s reclaimed %d entries idle for over %d ms", self.stage, len(entries), self.settings.claim_idle_ms
        )
        metrics.MESSAGES_RECLAIMED.labels(**self._labels).inc(len(entries))
        return self._set_deliveries(entries)

    def _entries(self, messages: list[tuple[str, dict[str, str] | None]]) -> list[Entry]:
        entries, trimmed = [], []
        for entry_id, fields in messages:
            if fields is None:
                trimmed.append(entry_id)  # trimmed while pending: nothing left to process
            else:
                entries.append(Entry(entry_id, fields))
        if trimmed:
            self.client.xack(self.stream, self.group, *trimmed)
        return entries

    def _set_deliveries(self, entries: list[Entry]) -> list[Entry]:
        """Fill in delivery counts, and dead-letter the entries that were delivered too often."""
        pending = self.client.xpending_range(
            self.stream,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 4 + 100,
            consumername=self.consumer,
        )
        counts = {item["message_id"]: int(item["times_delivered"]) for item in pending}
        fresh = []
        for entry in entries:
            entry.deliveries = counts.get(entry.id, entry.deliveries)
            if entry.deliveries > self.settings.max_deliveries:
                reason = (
                    f"delivered {entry.deliveries} times (MAX_DELIVERIES={self.settings.max_deliveries}) "
                    "without being acknowledged: its consumer crashed, hung or failed on it each time"
                )
                self._dead_letter(entry, reason)
            else:
                fresh.append(entry)
        return fresh

    # Handling ---------------------------------------------------------------

    def _process(self, entries: list[Entry]) -> None:
        """Handle ``entries`` until each is acknowledged, dead-lettered, left to be redelivered, or handed back."""
        ids = [entry.id for entry in entries]
        self.leases.hold(ids)
        try:
            redelivered = len(entries) > 1 and any(entry.deliveries > 1 for entry in entries)
            unfinished = self._attempt_redelivered(entries) if redelivered else self._attempt(entries)
            if unfinished:
                self._hand_back(unfinished)
        finally:
            self.leases.drop(ids)

    def _attempt_redelivered(self, entries: list[Entry]) -> list[Entry]:
        """Handle a batch that holds redelivered entries one entry at a time, counting a delivery only when tried.

        Entries come back after their consumer crashed or failed on them, all of its batch at once, and each of
        them counted a delivery. One entry that kills its process (out of memory, a crash in a native library)
        would then take every batch-mate to the dead-letter stream with it after MAX_DELIVERIES. Tried alone, in
        turn, with the delivery of an entry not tried yet taken back until its turn, only the culprit's count rises
        with each crash.
        """
        untried = [entry.id for entry in entries[1:]]
        self._with_retry(partial(self.leases.recount, untried, -1))
        for index, entry in enumerate(entries):
            if index:
                self._with_retry(partial(self.leases.recount, [entry.id], 1))
            unfinished = entries[index:] if self.stopping.is_set() else self._attempt([entry])
            if unfinished:
                # Handing back takes one delivery off each entry: give the ones not tried theirs again first.
                later = [entry.id for entry in entries[index + 1 :]]
                self._with_retry(partial(self.leases.recount, later, 1))
                return entries[index:]
        return []

    def _attempt(self, entries: list[Entry]) -> list[Entry]:
        """Handle ``entries``, retrying transient failures; the entries left unfinished because of a stop request."""
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, self.liveness)
        strikes = 0  # transient failures of a lone entry, each followed by a probe that passed
        while True:
            entries = self._still_held(entries)
            if not entries:
                return []
            self.liveness.beat()
            asked: float | None = None
            try:
                self._handle_and_ack(entries)
                self._resume()
                return []
            except ConfigurationError as exc:
                self._pause(exc, len(entries))
            except RETRYABLE as exc:
                self._count_refusal(exc)
                metrics.MESSAGES_FAILED.labels(**self._labels, reason="transient").inc(len(entries))
                metrics.MESSAGES_RETRIED.labels(**self._labels).inc(len(entries))
                # A dependency that asked to be left alone (Retry-After: busy, loading, its model broken) said the
                # failure is its own, whatever the input: only other transient failures may be an input's doing.
                suspect = isinstance(exc, TransientError) and exc.retry_after_s is None
                if suspect and self._dependency_serves_others():
                    if len(entries) > 1:
                        half = len(entries) // 2
                        log.warning(
                            "%s: a batch of %d failed (%s) while its dependency serves other requests; retrying it "
                            "in halves to find the entries it fails on",
                            self.stage,
                            len(entries),
                            exc,
                        )
                        return self._attempt_in_turn([entries[:half], entries[half:]])
                    strikes += 1
                    if strikes >= self.settings.max_deliveries:
                        self._fails_alone(entries[0], exc, strikes)
                        return []
                log.warning(
                    "%s: %s; retrying %d entries (attempt %d)", self.stage, exc, len(entries), backoff.attempts + 1
                )
                asked = exc.retry_after_s if isinstance(exc, TransientError) else None
            except Exception as exc:  # noqa: BLE001 - any other failure is isolated, never fatal
                if len(entries) == 1:
                    self._single_entry_failed(entries[0], exc)
                    self.leases.drop([entries[0].id])  # from now on it idles towards its redelivery
                    return []
                log.warning("%s: batch of %d failed (%s); retrying entry by entry", self.stage, len(entries), exc)
                return self._attempt_in_turn([[entry] for entry in entries])
            if not backoff.wait(self.stopping, asked or 0.0):
                return entries

    def _attempt_in_turn(self, pieces: list[list[Entry]]) -> list[Entry]:
        """Handle each piece of a batch in turn; the entries left unfinished because of a stop request."""
        for index, piece in enumerate(pieces):
            unfinished = piece if self.stopping.is_set() else self._attempt(piece)
            if unfinished:
                return unfinished + [entry for later in pieces[index + 1 :] for entry in later]
        return []

    def _dependency_serves_others(self) -> bool:
        """Whether the stage's probe passes now: the dependency that just failed a batch serves other inputs."""
        if self.probe is None:
            return False
        try:
            self.probe()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means: not known to serve others
            log.debug("%s: the probe failed too (%s): an outage, not the batch's inputs", self.stage, exc)
            return False
        return True

    def _fails_alone(self, entry: Entry, exc: Exception, strikes: int) -> None:
        """Dead-letter an entry its dependency keeps failing on while it serves other requests."""
        metrics.MESSAGES_FAILED.labels(**self._labels, reason="invalid").inc()
        reason = (
            f"failed {strikes} times, alone ({type(exc).__name__}: {exc}), while the dependency served a known-good "
            "request right after each failure: this entry's input makes it fail. Replay it once the dependency "
            "handles it."
        )
        self._with_retry(lambda: self._dead_letter(entry, reason))

    def _pause(self, exc: ConfigurationError, count: int) -> None:
        """Hold on to the batch while a setting contradicts a dependency: no entry is at fault, none is dead-lettered.

        A vector size other than EMBEDDING_DIM, a URL that answers 404 or a refused key fail every entry alike;
        dead-lettering them would move the whole backlog (on a first sync, everything) into a dead-letter stream,
        which nothing trims. The consumer keeps its entries (its loop keeps coming round, so its leases hold) and
        tries them again with backoff, so it resumes by itself once the dependency or the setting is right.
        """
        metrics.MESSAGES_FAILED.labels(**self._labels, reason="misconfigured").inc(count)
        reason = str(exc)
        if reason != self.paused:
            log.error(
                "%s paused: %s Nothing is dead-lettered: it keeps its %d entries, tries them again with backoff, and "
                "resumes by itself once the cause is gone.",
                self.stage,
                reason,
                count,
            )
        self.paused = reason
        metrics.CONSUMER_PAUSED.labels(**self._labels).set(1)

    def _resume(self) -> None:
        if self.paused is None:
            return
        log.warning("%s resumed: the batch it was paused on went through (%s was the cause)", self.stage, self.paused)
        self.paused = None
        metrics.CONSUMER_PAUSED.labels(**self._labels).set(0)

    def _still_held(self, entries: list[Entry]) -> list[Entry]:
        """Leave out the entries another consumer took over while this one stalled: they are in other hands now."""
        lost = self.leases.lost(entry.id for entry in entries)
        if not lost:
            return entries
        log.warning("%s: %d entries were taken over by another consumer; leaving them to it", self.stage, len(lost))
        return [entry for entry in entries if entry.id not in lost]

    def _hand_back(self, entries: list[Entry]) -> None:
        """Stopping with unfinished entries: let any consumer take them now, without counting a delivery."""
        try:
            self.leases.release([entry.id for entry in entries])
        except redis.RedisError as exc:  # they are then taken over after CLAIM_IDLE_MS, which counts a delivery
            log.warning("%s: could not hand back %d entries: %s", self.stage, len(entries), exc)
            return
        log.info("%s: handed back %d unfinished entries to group %s", self.stage, len(entries), self.group)

    def _handle_and_ack(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        tx = self.client.pipeline(transaction=True)
        batch = Batch(entries, tx, partition=self.partition)
        self.handler(batch)
        for entry in entries:
            if entry.id in batch.rejected:
                tx.xadd(dlq_stream(self.stream), self._dead_letter_fields(entry, batch.rejected[entry.id]))
        tx.xack(self.stream, self.group, *(entry.id for entry in entries))
        tx.execute()
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

    def _single_entry_failed(self, entry: Entry, exc: Exception) -> None:
        if isinstance(exc, PermanentError):
            metrics.MESSAGES_FAILED.labels(**self._labels, reason="invalid").inc()
            self._with_retry(lambda: self._dead_letter(entry, str(exc)))
            return
        metrics.MESSAGES_FAILED.labels(**self._labels, reason="error").inc()
        if entry.deliveries >= self.settings.max_deliveries:
            log.exception("%s: entry %s failed on its last allowed delivery", self.stage, entry.id)
            self._with_retry(lambda: self._dead_letter(entry, f"{type(exc).__name__}: {exc}"))
            return
        # Unknown failure: leave it pending. It is redelivered after CLAIM_IDLE_MS, and
        # dead-lettered once it has been delivered MAX_DELIVERIES times.
        log.exception(
            "%s: entry %s failed (delivery %d of %d); it will be retried",
            self.stage,
            entry.id,
            entry.deliveries,
            self.settings.max_deliveries,
        )

    def _dead_letter(self, entry: Entry, reason: str) -> None:
        tx = self.client.pipeline(transaction=True)
        tx.xadd(dlq_stream(self.stream), self._dead_letter_fields(entry, reason))
        tx.xack(self.stream, self.group, entry.id)
        tx.execute()
        log.error("%s dead-lettered entry %s: %s", self.stage, entry.id, reason)
        metrics.MESSAGES_DEAD_LETTERED.labels(**self._labels).inc()

    def _dead_letter_fields(self, entry: Entry, reason: str) -> dict[str, str]:
        return dead_letter_fields(
            stream=self.stream,
            group=self.group,
            entry_id=entry.id,
            fields=entry.fields,
            error=reason,
            deliveries=entry.deliveries,
            consumer=self.consumer,
        )

    def _with_retry(self, operation: Callable[[], T]) -> T | None:
        """Run a Redis operation, backing off while Redis is unreachable, full or read-only; None once stopping."""
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, self.liveness)
        while not self.stopping.is_set():
            self.liveness.beat()
            try:
                return operation()
            except REDIS_UNAVAILABLE as exc:
                log.warning("%s: Redis unavailable (%s); retrying", self.stage, exc)
            except REDIS_REFUSALS as exc:
                self._count_refusal(exc)
                log.warning("%s: %s; retrying", self.stage, exc)
            except redis.ResponseError as exc:
                if is_unblocked(exc):
                    log.warning("%s: %s; reading again", self.stage, exc)
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group vanished (Redis lost its data, or an operator deleted it): recreate it.
                log.error("%s: consumer group %s is missing on %s; recreating it", self.stage, self.group, self.stream)
                ensure_group(self.client, self.stream, self.group)
                continue
            if not backoff.wait(self.stopping):
                return None
        return None

    def _count_refusal(self, exc: Exception) -> None:
        if isinstance(exc, REDIS_REFUSALS):
            metrics.REDIS_REFUSED.labels(stage=self.stage, reason=refusal_reason(exc)).inc()
