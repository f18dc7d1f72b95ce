"""Handling a batch until each entry is acknowledged, dead-lettered or left to be redelivered, isolating the entries
that fail:

* a batch that holds redelivered entries is handled one entry at a time, so an entry that kills its process is
  dead-lettered without its batch-mates;
* a transient failure (a dependency down, Redis full or read-only) is retried with backoff, forever, unless the
  stage's probe passes: then the dependency serves other inputs, so the batch is split, and an entry that keeps
  failing alone, MAX_DELIVERIES times with the probe passing after each, is dead-lettered;
* a misconfiguration, a command the service's Redis user may not run among them, pauses the consumer with its
  entries (vecsync.misconfiguration_pause);
* any other failure is isolated entry by entry: bad input is dead-lettered at once, and an entry that failed for an
  unknown reason is left pending for redelivery.

The retrying of transient failures stays here with the isolation: whether to retry, to split or to dead-letter is
decided on each failed try, from that failure, so the two are one loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import redis

from vecsync import metrics
from vecsync.backoff import Backoff
from vecsync.batch import Entry
from vecsync.consumer_context import ConsumerContext
from vecsync.dead_letters import DeadLetters
from vecsync.errors import ConfigurationError, PermanentError, TransientError
from vecsync.leases import Leases
from vecsync.misconfiguration_pause import MisconfigurationPause
from vecsync.redis_errors import REDIS_REFUSALS, REDIS_UNAVAILABLE, acl_refusal
from vecsync.redis_retry import RedisRetry, count_refusal

# The consumer loop's lines, under the logger name they have always had.
log = logging.getLogger("vecsync.consumer")

# Errors that mean "try again later": Redis unreachable, full or read-only, or a dependency the handler reported.
RETRYABLE = (TransientError, *REDIS_UNAVAILABLE, *REDIS_REFUSALS)


class Isolation:
    """Tries ``handle_and_ack`` on a batch, and on parts of it, until each entry is done with. See the module docstring.

    ``probe`` is a known-good call to the dependency the handler uses (see vecsync.consumer.StreamConsumer).
    """

    def __init__(
        self,
        context: ConsumerContext,
        *,
        handle_and_ack: Callable[[list[Entry]], None],
        probe: Callable[[], None] | None,
        leases: Leases,
        pause: MisconfigurationPause,
        dead_letters: DeadLetters,
        redis_retry: RedisRetry,
    ) -> None:
        self.context = context
        self.settings = context.settings
        self.handle_and_ack = handle_and_ack
        self.probe = probe
        self.leases = leases
        self.pause = pause
        self.dead_letters = dead_letters
        self.redis_retry = redis_retry

    def handle(self, entries: list[Entry]) -> list[Entry]:
        """Handle ``entries``; the entries left unfinished because of a stop request."""
        redelivered = len(entries) > 1 and any(entry.deliveries > 1 for entry in entries)
        return self._attempt_redelivered(entries) if redelivered else self._attempt(entries)

    def _attempt_redelivered(self, entries: list[Entry]) -> list[Entry]:
        """Handle a batch that holds redelivered entries one entry at a time, counting a delivery only when tried.

        Entries come back after their consumer crashed or failed on them, all of its batch at once, and each of
        them counted a delivery. One entry that kills its process (out of memory, a crash in a native library)
        would then take every batch-mate to the dead-letter stream with it after MAX_DELIVERIES. Tried alone, in
        turn, with the delivery of an entry not tried yet taken back until its turn, only the culprit's count rises
        with each crash.
        """
        untried = [entry.id for entry in entries[1:]]
        self.redis_retry.run(partial(self.leases.recount, untried, -1))
        for index, entry in enumerate(entries):
            if index:
                self.redis_retry.run(partial(self.leases.recount, [entry.id], 1))
            unfinished = entries[index:] if self.context.stopping.is_set() else self._attempt([entry])
            if unfinished:
                # Handing back takes one delivery off each entry: give the ones not tried theirs again first.
                later = [entry.id for entry in entries[index + 1 :]]
                self.redis_retry.run(partial(self.leases.recount, later, 1))
                return entries[index:]
        return []

    def _attempt(self, entries: list[Entry]) -> list[Entry]:
        """Handle ``entries``, retrying transient failures; the entries left unfinished because of a stop request."""
        context = self.context
        labels = context.labels
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s, context.liveness)
        strikes = 0  # transient failures of a lone entry, each followed by a probe that passed
        while True:
            entries = self._still_held(entries)
            if not entries:
                return []
            context.liveness.beat()
            asked: float | None = None
            try:
                self.handle_and_ack(entries)
                self.pause.resume()
                return []
            except ConfigurationError as exc:
                self.pause.pause(exc, len(entries))
            except redis.exceptions.NoPermissionError as exc:
                self.pause.pause(acl_refusal(exc), len(entries))
            except RETRYABLE as exc:
                count_refusal(context.stage, exc)
                metrics.MESSAGES_FAILED.labels(**labels, reason="transient").inc(len(entries))
                metrics.MESSAGES_RETRIED.labels(**labels).inc(len(entries))
                # A dependency that asked to be left alone (Retry-After: busy, loading, its model broken) said the
                # failure is its own, whatever the input: only other transient failures may be an input's doing.
                suspect = isinstance(exc, TransientError) and exc.retry_after_s is None
                if suspect and self._dependency_serves_others():
                    if len(entries) > 1:
                        half = len(entries) // 2
                        log.warning(
                            "%s: a batch of %d failed (%s) while its dependency serves other requests; retrying it "
                            "in halves to find the entries it fails on",
                            context.stage,
                            len(entries),
                            exc,
                        )
                        return self._attempt_in_turn([entries[:half], entries[half:]])
                    strikes += 1
                    if strikes >= self.settings.max_deliveries:
                        self._dead_letter_entry_failing_alone(entries[0], exc, strikes)
                        return []
                log.warning(
                    "%s: %s; retrying %d entries (attempt %d)", context.stage, exc, len(entries), backoff.attempts + 1
                )
                asked = exc.retry_after_s if isinstance(exc, TransientError) else None
            except Exception as exc:  # noqa: BLE001 - any other failure is isolated, never fatal
                if len(entries) == 1:
                    self._dead_letter_or_leave_pending(entries[0], exc)
                    self.leases.drop([entries[0].id])  # from now on it idles towards its redelivery
                    return []
                log.warning("%s: batch of %d failed (%s); retrying entry by entry", context.stage, len(entries), exc)
                return self._attempt_in_turn([[entry] for entry in entries])
            if not backoff.wait(context.stopping, asked or 0.0):
                return entries

    def _attempt_in_turn(self, pieces: list[list[Entry]]) -> list[Entry]:
        """Handle each piece of a batch in turn; the entries left unfinished because of a stop request."""
        for index, piece in enumerate(pieces):
            unfinished = piece if self.context.stopping.is_set() else self._attempt(piece)
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
            log.debug("%s: the probe failed too (%s): an outage, not the batch's inputs", self.context.stage, exc)
            return False
        return True

    def _dead_letter_entry_failing_alone(self, entry: Entry, exc: Exception, strikes: int) -> None:
        """Dead-letter an entry its dependency keeps failing on while it serves other requests."""
        metrics.MESSAGES_FAILED.labels(**self.context.labels, reason="invalid").inc()
        reason = (
            f"failed {strikes} times, alone ({type(exc).__name__}: {exc}), while the dependency served a known-good "
            "request right after each failure: this entry's input makes it fail. Replay it once the dependency "
            "handles it."
        )
        self.redis_retry.run(lambda: self.dead_letters.send(entry, reason))

    def _still_held(self, entries: list[Entry]) -> list[Entry]:
        """Leave out the entries another consumer took over while this one stalled: they are in other hands now."""
        lost = self.leases.lost(entry.id for entry in entries)
        if not lost:
            return entries
        log.warning(
            "%s: %d entries were taken over by another consumer; leaving them to it", self.context.stage, len(lost)
        )
        return [entry for entry in entries if entry.id not in lost]

    def _dead_letter_or_leave_pending(self, entry: Entry, exc: Exception) -> None:
        """A lone entry failed: dead-letter it if its input is bad or this was its last delivery, else leave it."""
        labels = self.context.labels
        if isinstance(exc, PermanentError):
            metrics.MESSAGES_FAILED.labels(**labels, reason="invalid").inc()
            self.redis_retry.run(lambda: self.dead_letters.send(entry, str(exc)))
            return
        metrics.MESSAGES_FAILED.labels(**labels, reason="error").inc()
        if entry.deliveries >= self.settings.max_deliveries:
            log.exception("%s: entry %s failed on its last allowed delivery", self.context.stage, entry.id)
            self.redis_retry.run(lambda: self.dead_letters.send(entry, f"{type(exc).__name__}: {exc}"))
            return
        # Unknown failure: leave it pending. It is redelivered after CLAIM_IDLE_MS, and
        # dead-lettered once it has been delivered MAX_DELIVERIES times.
        log.exception(
            "%s: entry %s failed (delivery %d of %d); it will be retried",
            self.context.stage,
            entry.id,
            entry.deliveries,
            self.settings.max_deliveries,
        )
