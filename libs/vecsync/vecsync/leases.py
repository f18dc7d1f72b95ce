"""A consumer's hold on the entries it is working on, renewed while its loop is alive.

Other consumers take over entries that have been idle for CLAIM_IDLE_MS (XAUTOCLAIM), and each take-over counts a
delivery. A consumer that is alive and retrying through an outage must keep its entries however long the outage,
so a thread renews them every CLAIM_IDLE_MS / 3 with XCLAIM ... JUSTID, which resets their idle time without
counting a delivery. It renews only while the consumer's loop keeps coming round (``Liveness``): a consumer that
died, or whose loop is stuck, stops renewing and loses its entries after CLAIM_IDLE_MS, as it should.

A consumer that stops on request hands its unfinished entries back at once and uncounted: it sets their idle time
to CLAIM_IDLE_MS, so any consumer may take them now, and lowers their delivery count by one, so the next delivery
(a take-over, or its own re-read after a restart) brings the count back to where it was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import redis

from vecsync.liveness import Liveness

log = logging.getLogger(__name__)

# For each entry still pending for this consumer: reclaim it for the same consumer, setting its idle time and
# adding a delta to its delivery count. Entries another consumer took over, or that were acknowledged, are left
# alone; returns the ids of those another consumer holds now. KEYS[1]: the stream. ARGV: group, consumer, idle ms,
# count delta, entry ids...
_RECLAIM_OWN = """
local taken = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if entry and entry[2] == ARGV[2] then
    local count = math.max(entry[4] + tonumber(ARGV[4]), 0)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
  elseif entry then
    taken[#taken + 1] = id
  end
end
return taken
"""


class Leases:
    """The entries one consumer holds, renewed by a background thread while ``liveness`` says its loop is alive."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        claim_idle_ms: int,
        liveness: Liveness,
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.liveness = liveness
        self._reclaim_own = client.register_script(_RECLAIM_OWN)
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Leases:
        """Start renewing; a consumer run again after a stop (drain runs, tests) starts again."""
        self._closed.clear()
        self._thread = threading.Thread(target=self._renew_until_closed, name=f"leases-{self.stream}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def hold(self, entry_ids: Iterable[str]) -> None:
        with self._lock:
            self._held.update(entry_ids)

    def drop(self, entry_ids: Iterable[str]) -> None:
        """Stop renewing these entries: they were acknowledged, or failed and must go idle to be redelivered."""
        with self._lock:
            self._held.difference_update(entry_ids)
            self._lost.difference_update(entry_ids)

    def lost(self, entry_ids: Iterable[str]) -> set[str]:
        """Which of these entries another consumer has taken over since they were held."""
        with self._lock:
            return self._lost.intersection(entry_ids)

    def release(self, entry_ids: list[str]) -> None:
        """Hand unfinished entries back to the group at once, without counting a delivery."""
        self.drop(entry_ids)
        if entry_ids:
            self._reclaim_own(keys=[self.stream], args=[self.group, self.consumer, self.claim_idle_ms, -1, *entry_ids])

    def recount(self, entry_ids: list[str], delta: int) -> None:
        """Add ``delta`` to the delivery count of these entries, where still this consumer's (see vecsync.isolation)."""
        if entry_ids:
            self._reclaim_own(keys=[self.stream], args=[self.group, self.consumer, 0, delta, *entry_ids])

    def renew(self) -> None:
        """Reset the idle time of every held entry that is still this consumer's."""
        with self._lock:
            held = sorted(self._held)
        if not held:
            return
        # An entry no longer pending was acknowledged, most likely by this consumer's loop just now: not lost.
        gone = set(self._reclaim_own(keys=[self.stream], args=[self.group, self.consumer, 0, 0, *held]))
        if gone:
            with self._lock:
                self._lost.update(gone & self._held)
            log.warning(
                "%d entries of %s were taken over by another consumer of %s while %s held them",
                len(gone),
                self.stream,
                self.group,
                self.consumer,
            )

    def _renew_until_closed(self) -> None:
        # Three renewals per CLAIM_IDLE_MS: one may be late or fail, and the entries are still kept.
        interval_s = max(self.claim_idle_ms / 3000.0, 0.01)
        while not self._closed.wait(interval_s):
            if not self.liveness.alive():
                continue  # a stuck loop must lose its entries: that is what CLAIM_IDLE_MS is for
            try:
                self.renew()
            except redis.RedisError as exc:  # Redis down or full: nobody can take the entries meanwhile either
                log.debug("Could not renew the entries of %s: %s", self.consumer, exc)
