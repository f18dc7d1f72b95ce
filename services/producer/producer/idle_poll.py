"""How long the producer's idle change stream waits between two reads: the backoff that keeps many idle syncs cheap."""

from __future__ import annotations

import time


class IdlePoll:
    """The wait after each empty read of a change stream.

    IDLE_POLL_MS while the stream has been quiet for less than IDLE_POLL_MAX_MS; after that, twice the last wait at
    each further empty read, up to IDLE_POLL_MAX_MS; IDLE_POLL_MS again from the next event on.

    A server whose empty reads answer at once (the MongoDB stand-in, which has one cursor per collection) would cost
    a read every IDLE_POLL_MS per sync: twenty idle syncs, four hundred reads a second. Backing off, they cost about
    twenty. A change after a long quiet waits at most IDLE_POLL_MAX_MS more to be read; a stream quiet for a moment
    only, between bursts, is read as often as before.
    """

    def __init__(self, first_ms: int, most_ms: int) -> None:
        self.first_s = first_ms / 1000
        self.most_s = max(most_ms, first_ms) / 1000
        self.wait_s = self.first_s
        self.quiet_since: float | None = None

    def next_wait_s(self) -> float:
        """The wait after this empty read."""
        now = time.monotonic()
        if self.quiet_since is None:
            self.quiet_since = now
        if now - self.quiet_since < self.most_s:
            return self.first_s
        self.wait_s = min(self.wait_s * 2, self.most_s)
        return self.wait_s

    def reset(self) -> None:
        """An event came: read as often as IDLE_POLL_MS again."""
        self.wait_s = self.first_s
        self.quiet_since = None
