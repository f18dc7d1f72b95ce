"""The tombstones of deleted points: the part of the version fence that cannot live in Qdrant.

A point carries its own version, so Qdrant refuses any write older than it. A
deleted point is gone, and with it its version: the newest delete version of
each point is kept here instead, per collection, so that a late upsert older
than the delete cannot bring the document back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from vecsync.messages import parse_version

# Set-if-greater, atomically, so a tombstone never moves backwards whoever writes it and in whatever order.
# Versions are compared as decimal numbers of any size: by length first (they have no leading zeros), then as text.
_RECORD = """
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
for i = 1, #ARGV, 2 do
  local new = ARGV[i + 1]
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local new_ms, new_seq = string.match(new, '^(%d+)-(%d+)$')
  local set = not current
  if current then
    local ms, seq = string.match(current, '^(%d+)-(%d+)$')
    set = not ms or greater(new_ms, ms) or (new_ms == ms and greater(new_seq, seq))
  end
  if set then redis.call('HSET', KEYS[1], ARGV[i], new) end
end
return 1
"""


class Tombstones:
    """The newest delete version of each point of one collection (of one partition), in a Redis hash."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key  # tombstones_key(collection), in its partition (vecsync.partitions)
        self._record = client.register_script(_RECORD)

    def record(self, versions: Mapping[str, str]) -> None:
        """Keep, for each point, the greater of its tombstone and the given delete version."""
        if not versions:
            return
        args: list[str] = []
        for pid, version in versions.items():
            millis, seq = parse_version(version)
            args += [pid, f"{millis}-{seq}"]  # normalised, so the script may compare lengths
        self._record(keys=[self.key], args=args)

    def get(self, point_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The tombstone versions of those of ``point_ids`` that have one."""
        if not point_ids:
            return {}
        values = self.client.hmget(self.key, list(point_ids))
        return {pid: parse_version(value) for pid, value in zip(point_ids, values, strict=True) if value}
