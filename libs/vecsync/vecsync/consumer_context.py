"""What the parts of one consumer loop (vecsync.consumer) share: whose loop it is, its settings, its stop event and
its liveness."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from vecsync.liveness import Liveness
from vecsync.settings import ConsumerSettings
from vecsync.sync import DEFAULT_SYNC


@dataclass
class ConsumerContext:
    """One consumer of ``group`` on ``stream``, working for ``stage``.

    Not frozen: a runner may give a consumer another stop event before it runs (one event stops several loops), and
    every part of the loop must then wait on that one, so each reads ``stopping`` from here when it needs it.
    """

    client: redis.Redis
    stage: str
    stream: str
    group: str
    consumer: str
    settings: ConsumerSettings
    stopping: threading.Event
    liveness: Liveness
    # The sync whose entries the stream holds (see StreamConsumer).
    sync: str = DEFAULT_SYNC

    @property
    def labels(self) -> dict[str, str]:
        """The labels of the consumer's metrics (vecsync.metrics)."""
        return {"stage": self.stage, "stream": self.stream, "group": self.group, "sync": self.sync}
