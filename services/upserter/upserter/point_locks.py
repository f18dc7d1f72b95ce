"""Per-point write locks in Redis, taken all at once for a batch."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from vecsync.constants import POINT_LOCK_PREFIX
from vecsync.errors import TransientError

# All or nothing, atomically: two upserters with overlapping batches can never deadlock.
_ACQUIRE = """
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[1] then return 0 end
end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return 1
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 1
"""


class PointLocks:
    """Locks held in the name of one consumer.

    The holder is the consumer name, not a random token: consumer names are
    unique among running consumers, so a restarted upserter with the same name
    takes over the locks its crashed predecessor left instead of waiting for
    them to expire.
    """

    def __init__(self, client: redis.Redis, *, holder: str, ttl_ms: int, wait_ms: int) -> None:
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    @contextmanager
    def hold(self, point_ids: Sequence[str]) -> Iterator[None]:
        """Hold the locks of ``point_ids``; TransientError if another upserter keeps them past the wait."""
        keys = [POINT_LOCK_PREFIX + point_id for point_id in point_ids]
        token = self.holder
        deadline = time.monotonic() + self.wait_ms / 1000.0
        while not self._acquire(keys=keys, args=[token, self.ttl_ms]):
            if time.monotonic() >= deadline:
                raise TransientError(f"{len(keys)} points are locked by another upserter for over {self.wait_ms} ms")
            time.sleep(0.02)
        try:
            yield
        finally:
            self._release(keys=keys, args=[token])
