"""The pipeline's stages wired in-process, for tests that drain each stage in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import redis

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.service import Embedder
from embedder_worker.settings import EmbedderSettings
from producer.service import Producer
from producer.settings import ProducerSettings
from upserter.service import Upserter
from upserter.settings import UpserterSettings
from vecsync.bson_codec import mongo_id_of
from vecsync.consumer import StreamConsumer
from vecsync.documents import build_text, point_id, text_sha256
from vecsync.stream_stats import stream_stats
from vecsync.vectorstore import VectorStore

# Fast retries and reclaims, so that failure paths finish within a test.
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "block_ms": 50}


@dataclass
class Pipeline:
    redis_client: redis.Redis
    redis_url: str
    mongo_uri: str
    collection: pymongo.collection.Collection[dict[str, Any]]
    embedding_url: str
    store: VectorStore
    data_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.collection.database.name}.{self.collection.name}"

    def _common(self) -> dict[str, Any]:
        return {"redis_url": self.redis_url, "data_dir": self.data_dir, **FAST, **self.overrides}

    def groups(self) -> list[tuple[str, str]]:
        """Each stage's stream and consumer group, for every partition."""
        settings = self.producer_settings()
        return settings.stage1_groups() + settings.stage2_groups()

    def producer_settings(self) -> ProducerSettings:
        common = {k: v for k, v in self._common().items() if k != "block_ms"}
        return ProducerSettings(
            mongo_uri=self.mongo_uri,
            mongo_database=self.collection.database.name,
            mongo_collection=self.collection.name,
            max_await_ms=50,
            **common,
        )

    def embedder_settings(self, **extra: Any) -> EmbedderSettings:
        values = {"consumer_name": "embedder-1", "embedding_url": self.embedding_url, **self._common(), **extra}
        return EmbedderSettings(**values)

    def upserter_settings(self, **extra: Any) -> UpserterSettings:
        return UpserterSettings(
            consumer_name="upserter-1",
            qdrant_path=self.data_dir / "unused",
            mongo_uri=self.mongo_uri,
            mongo_database=self.collection.database.name,
            mongo_collection=self.collection.name,
            **{**self._common(), **extra},
        )

    def run_producer(self) -> None:
        Producer(self.producer_settings(), self.redis_client, self.collection).run(drain=True)

    def embedder_consumer(self, partition: int = 0, **extra: Any) -> StreamConsumer:
        settings = self.embedder_settings(**extra)
        client = EmbeddingClient.from_settings(settings)
        return StreamConsumer(
            self.redis_client,
            stage="embedder",
            stream=settings.partitions.name(settings.stage1_stream, partition),
            group=settings.stage1_group,
            handler=Embedder(settings, client, self.redis_client).handle,
            settings=settings,
            partition=partition,
            probe=client.probe,
        )

    def upserter_consumer(self, partition: int = 0, **extra: Any) -> StreamConsumer:
        settings = self.upserter_settings(**extra)
        return StreamConsumer(
            self.redis_client,
            stage="upserter",
            stream=settings.partitions.name(settings.stage2_stream, partition),
            group=settings.stage2_group,
            handler=Upserter(settings, self.redis_client, self.store, self.collection).handle,
            settings=settings,
            partition=partition,
        )

    def drain(self) -> None:
        """Run each stage to completion, again while any stage fed back work (a change queued to be embedded again)."""
        self.run_producer()
        partitions = self.producer_settings().partitions.indexes()
        for _ in range(5):
            for partition in partitions:
                self.embedder_consumer(partition).run(drain=True)
            for partition in partitions:
                self.upserter_consumer(partition).run(drain=True)
            if all(stream_stats(self.redis_client, *group).drained for group in self.stage1_groups()):
                return
        stats = [stream_stats(self.redis_client, stream, group) for stream, group in self.groups()]
        raise AssertionError(f"the stages kept feeding each other work: {stats}")

    def stage1_groups(self) -> list[tuple[str, str]]:
        return self.producer_settings().stage1_groups()

    def drained(self) -> bool:
        """Nothing unread or pending in any stage's partition."""
        return all(stream_stats(self.redis_client, *group).drained for group in self.groups())

    def points(self) -> dict[str, dict[str, Any]]:
        """Every point's payload, by mongo_id."""
        points: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            page, offset = self.store.scroll(limit=256, offset=offset)
            points.update({payload["mongo_id"]: payload for payload in page.values()})
            if offset is None:
                return points

    def chunks_of(self, mongo_id: str) -> list[dict[str, Any]]:
        """The payloads of a document's points, in chunk order."""
        found = []
        offset = None
        while True:
            page, offset = self.store.scroll(limit=256, offset=offset)
            found += [payload for payload in page.values() if payload["mongo_id"] == mongo_id]
            if offset is None:
                return sorted(found, key=lambda payload: payload.get("chunk_index", 0))

    def assert_matches_mongo(self, text_fields: tuple[str, ...] = ("subject", "content")) -> None:
        """Qdrant holds exactly one current point per MongoDB document with text: none missing, extra or stale."""
        expected = {}
        for document in self.collection.find():
            text = build_text(document, text_fields, 8192)
            if text:
                expected[mongo_id_of(document["_id"])] = text
        points = self.points()
        assert sorted(points) == sorted(expected), "point ids differ from MongoDB's documents"
        for mongo_id, text in expected.items():
            payload = points[mongo_id]
            assert payload["text"] == text, f"stale text for {mongo_id}"
            assert payload["text_sha256"] == text_sha256(text)
            records = self.store.retrieve([point_id(self.source, mongo_id)])
            assert len(records) == 1
