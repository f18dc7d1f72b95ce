"""Which entries a consumer loop handles next: its own from before a restart, then entries idle in other hands,
then new ones.

Reclaiming idle entries (XAUTOCLAIM) stays here with the other two reads: each gives the next batch, and all three
share the turning of a reply into entries and the counting of deliveries that dead-letters an entry delivered more
than MAX_DELIVERIES times.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from vecsync import metrics
from vecsync.batch import Entry
from vecsync.consumer_context import ConsumerContext
from vecsync.dead_letters import DeadLetters

# The consumer loop's lines, under the logger name they have always had.
log = logging.getLogger("vecsync.consumer")


class EntryReader:
    """Reads the batches of one consumer through its group (XREADGROUP, XAUTOCLAIM)."""

    def __init__(self, context: ConsumerContext, dead_letters: DeadLetters) -> None:
        self.context = context
        self.settings = context.settings
        self.dead_letters = dead_letters
        self._reading_own_history = True
        self._last_claim = 0.0
        # Where the next XAUTOCLAIM scan of the pending list starts (see _claim_idle).
        self._claim_cursor = "0-0"

    def next_entries(self, *, drain: bool) -> list[Entry] | None:
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
        if missing <= 0 or not self.settings.linger_ms or self.context.stopping.wait(self.settings.linger_ms / 1000):
            return entries
        return entries + self._read(">", block=None, count=missing)

    def _reread_own_pending(self) -> list[Entry]:
        entries = self._read("0", block=None)
        if not entries:
            return []
        metrics.MESSAGES_RECLAIMED.labels(**self.context.labels).inc(len(entries))
        return self._deliverable(entries)

    def _read(self, start: str, block: int | None, count: int | None = None) -> list[Entry]:
        context = self.context
        response = context.client.xreadgroup(
            context.group,
            context.consumer,
            {context.stream: start},
            count=count or self.settings.batch_size,
            block=block,
        )
        entries: list[Entry] = []
        for _stream, messages in cast(list[tuple[str, Any]], response or []):
            entries.extend(self._entries_of(messages))
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
        context = self.context
        self._last_claim = time.monotonic()
        from_the_start = self._claim_cursor == "0-0"
        while True:
            response = context.client.xautoclaim(
                context.stream,
                context.group,
                context.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=self._claim_cursor,
                count=self.settings.batch_size,
            )
            self._claim_cursor = str(response[0])
            entries = self._entries_of(response[1])
            if entries:
                break
            if self._claim_cursor == "0-0":
                if from_the_start:
                    return []  # came round the whole list: nothing is idle
                from_the_start = True  # wrapped: once more from the front, which covers where this round began
        log.warning(
            "%s reclaimed %d entries idle for over %d ms", context.stage, len(entries), self.settings.claim_idle_ms
        )
        metrics.MESSAGES_RECLAIMED.labels(**context.labels).inc(len(entries))
        return self._deliverable(entries)

    def _entries_of(self, messages: list[tuple[str, dict[str, str] | None]]) -> list[Entry]:
        """The entries of a reply; those trimmed while pending are acknowledged, as nothing is left to process."""
        entries, trimmed = [], []
        for entry_id, fields in messages:
            if fields is None:
                trimmed.append(entry_id)  # trimmed while pending: nothing left to process
            else:
                entries.append(Entry(entry_id, fields))
        if trimmed:
            self.context.client.xack(self.context.stream, self.context.group, *trimmed)
        return entries

    def _deliverable(self, entries: list[Entry]) -> list[Entry]:
        """Fill in delivery counts, dead-letter the entries that were delivered too often, and return the others."""
        context = self.context
        pending = context.client.xpending_range(
            context.stream,
            context.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 4 + 100,
            consumername=context.consumer,
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
                self.dead_letters.send(entry, reason)
            else:
                fresh.append(entry)
        return fresh
