"""The local stack on free ports, for the end-to-end tests, the chaos test and the benchmarks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.servers import free_port, free_port_run
from vecsync.redis_client import connect
from vecsync.stream_stats import stream_stats
from vecsync.syncs import load_syncs, settings_for
from vecsync_local.stack import LocalStack, LocalStackSettings


def stack_settings(data_dir: Path, **overrides: Any) -> LocalStackSettings:
    """Settings of a local stack whose every port is free, so that it runs beside anything else."""
    defaults: dict[str, Any] = {
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "mongo_uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        "embedding_url": f"http://127.0.0.1:{free_port()}",
        "upserter_url": f"http://127.0.0.1:{free_port()}",
        "producer_metrics_port": free_port(),
        "qdrant_rest_port": free_port(),
        # Worker i uses this port plus i.
        "embedder_metrics_port": free_port_run(max(8, overrides.get("embedder_workers", 0))),
    }
    return LocalStackSettings(data_dir=data_dir, **{**defaults, **overrides})


@contextmanager
def running_stack(settings: LocalStackSettings) -> Iterator[LocalStack]:
    """A local stack, supervised as `make run` does (what dies is restarted), stopped at the end."""
    stack = LocalStack(settings)
    supervisor = threading.Thread(target=stack.supervise, daemon=True)
    try:
        stack.start()
        supervisor.start()
        yield stack
    finally:
        stack.stop()


def drained(settings: LocalStackSettings, *, min_stage1_entries: int = 0) -> bool:
    """Whether both stages of every sync have processed everything, in every partition (and stage 1 holds at least
    ``min_stage1_entries``)."""
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    each = [settings_for(settings, sync) for sync in load_syncs(settings)]
    try:
        stage1 = [group for one in each for group in one.stage1_groups()]
        stages = stage1 + [group for one in each for group in one.stage2_groups()]
        if sum(client.xlen(stream) for stream, _group in stage1) < min_stage1_entries:
            return False
        return all(stream_stats(client, stream, group).drained for stream, group in stages)
    finally:
        client.close()
