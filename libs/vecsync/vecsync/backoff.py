"""Exponential backoff with jitter: how long every retry loop of vecsync waits before its next try."""

from __future__ import annotations

import random
import threading

from vecsync.liveness import Liveness


class Backoff:
    """Exponential backoff with jitter, interruptible by a stop event.

    With a ``liveness``, each wait is announced to it: a loop backing off on purpose is alive.
    """

    def __init__(self, initial_s: float, max_s: float, liveness: Liveness | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.liveness = liveness
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops growing once past any ceiling: 2.0 ** 1024 overflows, some nine hours into an outage
        # at the default 30 s ceiling.
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.attempts, 60))
        self.attempts += 1
        # Half fixed, half random: spreads retries from many workers without ever retrying at once.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def wait(self, stopping: threading.Event, at_least_s: float = 0.0) -> bool:
        """Sleep for the next delay, or ``at_least_s`` if longer; False when asked to stop meanwhile."""
        delay = max(self.next_delay(), at_least_s)
        if self.liveness is not None:
            self.liveness.beat(waiting_s=delay)
        return not stopping.wait(delay)
