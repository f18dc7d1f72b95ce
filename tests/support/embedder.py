"""An embedder-worker's consumer of stage 1 in this process, against an embedding-api at ``embedding_url`` (a real
app or a stand-in), with fast retries, for tests that drive the worker entry by entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.service import Embedder
from embedder_worker.settings import EmbedderSettings
from vecsync.constants import STAGE1_GROUP, STAGE1_STREAM
from vecsync.consumer import StreamConsumer


def embedder(
    redis_client: redis.Redis, redis_url: str, embedding_url: str, data_dir: Path, **extra: Any
) -> StreamConsumer:
    """The consumer ``embedder-1`` of stage 1's group; ``extra`` settings on top of the test defaults."""
    settings = EmbedderSettings(
        redis_url=redis_url,
        embedding_url=embedding_url,
        consumer_name="embedder-1",
        data_dir=data_dir,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        block_ms=50,
        **extra,
    )
    client = EmbeddingClient.from_settings(settings)
    return StreamConsumer(
        redis_client,
        stage="embedder",
        stream=STAGE1_STREAM,
        group=STAGE1_GROUP,
        handler=Embedder(settings, client, redis_client).handle,
        settings=settings,
        probe=client.probe,
    )
