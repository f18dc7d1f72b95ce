"""A consumer process that dies, as a native crash or the kernel's OOM killer ends one, on the entry named "poison".

Run as ``python -m tests.support.crashing_worker REDIS_URL CONSUMER_NAME``: it drains stream ``in`` through group
``workers`` into stream ``out`` and exits 0, or exits 17 at once, without any cleanup, when it meets the poison.
"""

from __future__ import annotations

import os
import sys

from vecsync.batch import Batch
from vecsync.consumer import StreamConsumer
from vecsync.redis_client import connect
from vecsync.settings import ConsumerSettings

STREAM, GROUP, OUT = "in", "workers", "out"
CRASH_EXIT = 17
MAX_DELIVERIES = 3


def handle(batch: Batch) -> None:
    for entry in batch.entries:
        if entry.fields["value"] == "poison":
            os._exit(CRASH_EXIT)
        batch.tx.xadd(OUT, entry.fields)


def main() -> None:
    redis_url, name = sys.argv[1:3]
    settings = ConsumerSettings(
        consumer_name=name,
        batch_size=64,
        block_ms=20,
        claim_idle_ms=100,
        max_deliveries=MAX_DELIVERIES,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    client = connect(redis_url)
    StreamConsumer(client, stage="test", stream=STREAM, group=GROUP, handler=handle, settings=settings).run(drain=True)


if __name__ == "__main__":
    main()
