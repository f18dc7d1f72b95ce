"""What a stage's handler is given: a batch of stream entries, and the transaction that commits with their acks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis


@dataclass
class Entry:
    id: str
    fields: dict[str, str]
    deliveries: int = 1


@dataclass
class Batch:
    """What a handler gets: the entries, and a transaction that commits with their acks."""

    entries: list[Entry]
    tx: redis.client.Pipeline
    rejected: dict[str, str] = field(default_factory=dict)
    # The partition the entries come from (vecsync.partitions): whatever the handler queues on ``tx`` must use this
    # partition's keys, so that the transaction stays in one hash slot of a Redis Cluster.
    partition: int = 0
    # Called once the transaction has committed, in order: work on keys of other hash slots than the batch's (a
    # model change's progress count, vecsync.reindex), done only for a batch whose output is in stage 2.
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def reject(self, entry: Entry, reason: str) -> None:
        """Send ``entry`` to the dead-letter stream with ``reason`` instead of processing it."""
        self.rejected[entry.id] = reason


Handler = Callable[[Batch], None]
