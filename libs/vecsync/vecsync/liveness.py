"""Whether a service's main loop is still coming round, for /healthz and for keeping a consumer's entries."""

from __future__ import annotations

import time


class Liveness:
    """When the main loop must come round again: STALL_TIMEOUT_S after it last did, plus any wait it announced.

    A loop that waits on purpose (backing off while a dependency is down, honouring a Retry-After) is alive;
    one stuck in a call that never returns, or in a deadlock, is not, once STALL_TIMEOUT_S has passed.
    """

    def __init__(self, stall_timeout_s: float) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._due: float | None = None  # no beat yet: starting up

    def beat(self, *, waiting_s: float = 0.0) -> None:
        """The loop came round, and means to wait ``waiting_s`` before it comes round again."""
        self._due = time.monotonic() + waiting_s + self.stall_timeout_s

    def alive(self) -> bool:
        due = self._due
        return due is not None and time.monotonic() <= due
