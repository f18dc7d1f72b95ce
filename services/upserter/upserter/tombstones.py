"""The tombstones of deleted points: the part of the version fence that cannot live in Qdrant.

A point carries its own version, so Qdrant refuses any write older than it. A
deleted point is gone, and with it its version: the newest delete version of
each point is kept here instead, per collection, so that a late upsert older
than the delete cannot bring the document back.

A tombstone is needed only while a change of its document older than it can
still arrive: while an entry older than it is left in stage 1, stage 2 or their
dead-letter streams (unprocessed, pending, dead-lettered, or acknowledged and
retained, which a replay of the stream would apply again). Once none is, the
sweep (``TombstoneSweep``, with ``oldest_version_left`` and
``Tombstones.remove_up_to``) removes it, so the hash holds the deletes of the
retention window, not every delete ever made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import redis
from prometheus_client import Counter

from vecsync.constants import TRIMMED_KEY_PREFIX, dlq_stream
from vecsync.messages import parse_version
from vecsync.partitions import Partitions

log = logging.getLogger("vecsync.upserter")

TOMBSTONES_REMOVED = Counter(
    "vecsync_upserter_tombstones_removed_total",
    "Tombstones removed because no change older than them was left in the streams or dead-letter streams.",
)

# Versions compared as in _RECORD; shared by the scripts below.
_GREATER = """
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local function older(x, y)
  local x_ms, x_seq = string.match(x, '^(%d+)-(%d+)$')
  local y_ms, y_seq = string.match(y, '^(%d+)-(%d+)$')
  return greater(y_ms, x_ms) or (x_ms == y_ms and greater(y_seq, x_seq))
end
"""

# The oldest version among up to ARGV[3] entries of KEYS[1] from ARGV[1] to ARGV[2], and the id of the last entry
# read (false when none). A stage entry's version is its `version` field, or its own id (a stage 1 entry written by
# the producer); a dead letter's is the version in the entry it holds, or that entry's id. Read here, so that only
# two ids cross the network, not the entries (stage 2 entries carry vectors).
_OLDEST_VERSION = (
    _GREATER
    + """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local oldest = false
for _, entry in ipairs(entries) do
  local fields, version, letter, original_id = entry[2], nil, nil, nil
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'version' then version = fields[i + 1]
    elseif name == 'fields' then letter = fields[i + 1]
    elseif name == 'entry_id' then original_id = fields[i + 1] end
  end
  if letter then
    local ok, original = pcall(cjson.decode, letter)
    version = ok and type(original) == 'table' and type(original.version) == 'string' and original.version
      or original_id
  end
  if not version or not string.match(version, '^%d+-%d+$') then version = entry[1] end
  if not oldest or older(version, oldest) then oldest = version end
end
local last = entries[#entries]
return {last and last[1] or false, oldest}
"""
)

# Removes each field of KEYS[1] named in ARGV[2..] whose version is still not newer than ARGV[1]: a tombstone only
# grows, so one that grew since it was read stays.
_REMOVE_UP_TO = (
    _GREATER
    + """
local removed = 0
for i = 2, #ARGV do
  local version = redis.call('HGET', KEYS[1], ARGV[i])
  if version and not older(ARGV[1], version) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""
)

# Entries the sweep reads per script call, and tombstones it looks at per HSCAN call.
SWEEP_PAGE = 250

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
        self._remove_up_to = client.register_script(_REMOVE_UP_TO)

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

    def remove_up_to(self, bound: tuple[int, int]) -> int:
        """Remove every tombstone not newer than ``bound`` (from ``oldest_version_left``); the number removed."""
        removed, cursor, bound_text = 0, 0, f"{bound[0]}-{bound[1]}"
        while True:
            cursor, page = self.client.hscan(self.key, cursor, count=SWEEP_PAGE)
            due = [pid for pid, version in page.items() if parse_version(version) <= bound]
            if due:
                removed += int(self._remove_up_to(keys=[self.key], args=[bound_text, *due]))
            if not cursor:
                return removed


def oldest_version_left(client: redis.Redis, *, stage1: str, stage2: str) -> tuple[int, int] | None:
    """The oldest version any change of one partition can still arrive with; None when it cannot be known now.

    The oldest version carried by any entry of ``stage1``, ``stage2`` and their dead-letter streams, and at most
    stage 1's last id when the sweep began (changes the producer writes later are newer). No tombstone newer than
    it may be removed.

    The streams are read one after another while the stages run. A change moves forward by a new entry that keeps
    its version (an embedder-worker's stage 2 entry, a dead letter, an upserter's stage 1 entry to be embedded again)
    committed with the ack of the entry it came from, which stays in its stream until trimmed. Read in the order
    changes flow (stage 1, its dead letters, stage 2, its dead letters), every change is found where it was or where
    it went; the one way back, into stage 1, is covered by reading stage 1 again from where it ended. Its new entries
    can only have been trimmed meanwhile if stage 1 was trimmed beyond that point: then the answer is None, and the
    next sweep tries again. `vecsync dlq replay` re-reads MongoDB, so its entries are new changes.
    """
    script = client.register_script(_OLDEST_VERSION)

    def oldest_in(stream: str, first: str = "-", last: str = "+") -> tuple[int, int] | None:
        oldest: tuple[int, int] | None = None
        while True:
            read_to, version = script(keys=[stream], args=[first, last, SWEEP_PAGE])
            if not read_to:
                return oldest
            if version and (oldest is None or parse_version(version) < oldest):
                oldest = parse_version(version)
            first = f"({read_to}"

    try:
        began = str(client.xinfo_stream(stage1)["last-generated-id"])
    except redis.ResponseError:
        return None  # no stage 1 yet: nothing to compare with
    found = [
        parse_version(began),
        oldest_in(stage1, last=began),
        oldest_in(dlq_stream(stage1)),
        oldest_in(stage2),
        oldest_in(dlq_stream(stage2)),
        oldest_in(stage1, first=f"({began}"),
    ]
    trimmed_to = client.get(TRIMMED_KEY_PREFIX + stage1)
    if trimmed_to and parse_version(str(trimmed_to)) > parse_version(began):
        return None  # stage 1 lost entries written during the sweep, which it has not read yet
    return min(version for version in found if version is not None)


class TombstoneSweep:
    """Removes each partition's tombstones that no change left in its streams can need, at most once an interval.

    ``tombstones`` holds each partition's Tombstones, by partition index; ``streams`` are the (stage 1, stage 2)
    streams' names before partitioning of every sync that writes the collection (several syncs may share one, and
    with it its tombstones): a tombstone goes only once no change in any of them can need it. An ``interval_s`` of 0
    never sweeps on its own (``run`` still does).
    """

    def __init__(
        self,
        client: redis.Redis,
        tombstones: Sequence[Tombstones],
        partitions: Partitions,
        *,
        streams: Sequence[tuple[str, str]],
        interval_s: float,
    ) -> None:
        self.client = client
        self.tombstones = tombstones
        self.partitions = partitions
        self.streams = list(streams)
        self.interval_s = interval_s
        # When each partition's tombstones were last swept: the first sweep comes one interval after the start.
        self._last_sweep = dict.fromkeys(partitions.indexes(), time.monotonic())

    def run_if_due(self, partition: int) -> None:
        """Sweep the partition if its interval has passed; a failure is logged, never raised."""
        if not self.interval_s or time.monotonic() - self._last_sweep[partition] < self.interval_s:
            return
        self._last_sweep[partition] = time.monotonic()
        try:
            removed = self.run(partition)
        except Exception as exc:  # noqa: BLE001 - the tombstones stay a while longer; the batch never fails for it
            log.warning("Could not sweep the tombstones of partition %d: %s", partition, exc)
            return
        if removed:
            log.info("Removed %d tombstones that no change left in the streams can need", removed)

    def run(self, partition: int) -> int:
        """Remove the partition's tombstones that no change left in its streams is older than; the number removed."""
        found = [
            oldest_version_left(
                self.client,
                stage1=self.partitions.name(stage1, partition),
                stage2=self.partitions.name(stage2, partition),
            )
            for stage1, stage2 in self.streams
        ]
        if not found or None in found:
            return 0
        oldest = min(version for version in found if version is not None)
        removed = self.tombstones[partition].remove_up_to(oldest)
        TOMBSTONES_REMOVED.inc(removed)
        return removed
