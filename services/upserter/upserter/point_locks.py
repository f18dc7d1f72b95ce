"""Per-point write locks in Redis, taken all at once for a batch and confirmed before every write."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import redis
from prometheus_client import Counter
from redis.commands.core import Script

from vecsync.constants import POINT_LOCK_PREFIX
from vecsync.errors import TransientError

LOCKS_LAPSED = Counter(
    "vecsync_upserter_locks_lapsed_total",
    "Batches stopped and retried because the upserter's point locks expired or were taken over mid-batch.",
)

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

# KEYS: the locks, then (with fields to set) a hash written only if every lock is still held. ARGV[1]: the
# holder, ARGV[2]: the TTL to extend the locks to, then field/value pairs (an empty value deletes the field).
_CONFIRM = """
local locks = #KEYS
if #ARGV > 2 then locks = locks - 1 end
for i = 1, locks do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then return 0 end
end
for i = 1, locks do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[#KEYS], ARGV[i])
  else
    redis.call('HSET', KEYS[#KEYS], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


class LocksLapsed(TransientError):
    """Raised when an upserter no longer holds its point locks mid-batch; the batch is retried and fenced again."""


class HeldLocks:
    """The locks of one batch, as held: each step that writes first confirms that they still are."""

    def __init__(self, confirm: Script, keys: list[str], *, holder: str, ttl_ms: int) -> None:
        self._confirm = confirm
        self._keys = keys
        self._holder = holder
        self._ttl_ms = ttl_ms

    def confirm(self) -> None:
        """Extend the locks by their TTL; LocksLapsed if any expired or went to another upserter meanwhile."""
        self.confirm_and_set(None, {})

    def confirm_and_set(self, hash_key: str | None, fields: Mapping[str, str | None]) -> None:
        """Confirm the locks and, in the same atomic step, set ``fields`` in ``hash_key`` (None deletes a field)."""
        keys, args = list(self._keys), [self._holder, str(self._ttl_ms)]
        if hash_key and fields:
            keys.append(hash_key)
            for name, value in fields.items():
                args += [name, value or ""]
        if not self._confirm(keys=keys, args=args):
            LOCKS_LAPSED.inc()
            raise LocksLapsed(
                f"this upserter's locks of {len(self._keys)} points lapsed mid-batch (a Qdrant call took longer "
                "than POINT_LOCK_TTL_MS, or the process stalled)"
            )


class PointLocks:
    """Locks held in the name of one consumer.

    The holder is the consumer name, not a random token: consumer names are
    unique among running consumers, so a restarted upserter with the same name
    takes over the locks its crashed predecessor left instead of waiting for
    them to expire.
    """

    def __init__(self, client: redis.Redis, *, holder: str, ttl_ms: int, wait_ms: int, key_suffix: str = "") -> None:
        self.holder = holder
        # A partition's hash tag (vecsync.partitions), so that a batch's locks share its partition's slot.
        self.key_suffix = key_suffix
        self.ttl_ms = ttl_ms
        self.wait_ms = wait_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._confirm = client.register_script(_CONFIRM)

    @contextmanager
    def hold(self, point_ids: Sequence[str]) -> Iterator[HeldLocks]:
        """Hold the locks of ``point_ids``; TransientError if another upserter keeps them past the wait."""
        keys = [POINT_LOCK_PREFIX + point_id + self.key_suffix for point_id in point_ids]
        token = self.holder
        deadline = time.monotonic() + self.wait_ms / 1000.0
        while not self._acquire(keys=keys, args=[token, self.ttl_ms]):
            if time.monotonic() >= deadline:
                raise TransientError(f"{len(keys)} points are locked by another upserter for over {self.wait_ms} ms")
            time.sleep(0.02)
        try:
            yield HeldLocks(self._confirm, keys, holder=token, ttl_ms=self.ttl_ms)
        finally:
            self._release(keys=keys, args=[token])
