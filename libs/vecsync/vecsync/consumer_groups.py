"""A stream's consumer groups: creating one where it is missing, and a consumer's leaving one."""

from __future__ import annotations

import redis

# Removes a consumer from its group only if it holds no pending entry, in one step: between a separate check and
# XGROUP DELCONSUMER, a consumer of the same name (a restart) could take entries, and DELCONSUMER would discard them
# from the group's pending list, never to be processed. One key, so it runs on a Redis Cluster too. KEYS[1]: the
# stream. ARGV: group, consumer. Returns 1 when the consumer left (or was not there), 0 when it holds entries.
LEAVE_GROUP_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream itself) reading from the start, if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
