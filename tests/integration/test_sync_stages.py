"""The consumer stages serve every sync of a definition file (VECSYNC_CONFIG), each into its own Qdrant collection.

The embedder-worker and the upserter run as the services they are, on a definition file of two syncs; stage 1
entries are written the way the producer writes them, into each sync's own stream. The range filters on a typed
payload index are checked on both store code paths (vecsync.store.embedded and vecsync.store.server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client import CollectorRegistry

from tests.support.servers import BIN, Server, free_port, wait_for
from tests.support.stores import index_types
from vecsync.cli.store import UpserterStore
from vecsync.documents import point_id
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.metrics import StreamStatsCollector, WatchedStream
from vecsync.settings import QdrantSettings
from vecsync.store import open_vector_stores
from vecsync.vectorstore import VectorStore

KEY = "the upserter's key for these tests"

TWO_COLLECTIONS = """
syncs:
  - name: tickets
    mongo_database: app
    mongo_collection: tickets
    text_fields: [subject, content]
    payload_fields: [status, meta.priority, tags]
    payload_indexes: {meta.priority: integer}
  - name: articles
    mongo_database: kb
    mongo_collection: articles
    text_fields: [title, body.text]
    payload_fields: [author.name]
    qdrant_collection: kb_articles
"""

ONE_COLLECTION = """
syncs:
  - name: tickets
    mongo_database: app
    mongo_collection: tickets
    text_fields: [subject]
    payload_fields: [meta.priority]
    payload_indexes: {meta.priority: integer}
    qdrant_collection: search
  - name: articles
    mongo_database: kb
    mongo_collection: articles
    text_fields: [title]
    payload_fields: [author.name, rating]
    payload_indexes: {rating: float}
    qdrant_collection: search
"""


def ticket(number: int) -> dict[str, Any]:
    return {
        "_id": f"t{number}",
        "subject": f"printer jam number {number}",
        "content": "paper stuck in tray two",
        "status": "open",
        "meta": {"priority": number},
        "tags": ["printer", "paper"],
    }


def article(number: int) -> dict[str, Any]:
    return {
        "_id": f"a{number}",
        "title": f"how to clear jam {number}",
        "body": {"text": "open the tray"},
        "author": {"name": "Kim"},
        "rating": number / 2,
    }


def publish(client: redis.Redis, stream: str, source: str, document: dict[str, Any]) -> None:
    """A change as the producer writes it to a sync's stage 1 stream."""
    change = DocumentChange("upsert", source, str(document["_id"]), time.time(), document)
    client.xadd(stream, change.to_fields())


class Stage:
    """A service run as a process on the test's environment, stopped with SIGTERM."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [str(BIN / command)], env={**env, "METRICS_PORT": str(self.port)}, stdout=out, stderr=subprocess.STDOUT
            )

    def healthz(self) -> str:
        try:
            return requests.get(self.base + "/healthz", timeout=2).text
        except requests.RequestException:
            return ""

    def metrics(self) -> str:
        return requests.get(self.base + "/metrics", timeout=5).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        assert self.process.returncode == 0, self.log.read_text()


@contextmanager
def stages(env: dict[str, str], tmp_path: Path, *commands: str) -> Iterator[dict[str, Stage]]:
    running: dict[str, Stage] = {}
    try:
        for command in commands:
            running[command] = Stage(command, env, tmp_path / f"{command}.log")
        for stage in running.values():
            wait_for(lambda stage=stage: stage.healthz().startswith("ok"), timeout=90, what=f"{stage.log.stem} healthy")  # type: ignore[misc]
        yield running
    finally:
        for stage in running.values():
            stage.stop()


@pytest.fixture
def environment(redis_url: str, mongo_uri: str, hash_api: Server, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URI": mongo_uri,
        "EMBEDDING_URL": f"http://127.0.0.1:{hash_api.port}",
        "DATA_DIR": str(tmp_path / "data"),
        "UPSERTER_API_KEY": KEY,
        "BACKOFF_INITIAL_S": "0.01",
        "BACKOFF_MAX_S": "0.1",
        "BLOCK_MS": "50",
        "QDRANT_FLUSH_INTERVAL_MS": "0",
    }


def with_config(environment: dict[str, str], tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "syncs.yaml"
    path.write_text(text)
    return {**environment, "VECSYNC_CONFIG": str(path)}


def points(store: VectorStore) -> dict[str, dict[str, Any]]:
    page, offset = store.scroll(limit=1000, offset=None)
    assert offset is None
    return {payload["mongo_id"]: payload for payload in page.values()}


def embedded_stores(data_dir: Path, indexes: dict[str, Any]) -> dict[str, VectorStore]:
    return open_vector_stores(QdrantSettings(qdrant_path=data_dir / "qdrant"), data_dir, indexes)


def test_the_stages_move_each_syncs_entries_into_its_own_collection(
    environment: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = with_config(environment, tmp_path, TWO_COLLECTIONS)
    for number in range(1, 6):
        publish(redis_client, "raw_document_changes.tickets", "app.tickets", ticket(number))
        publish(redis_client, "raw_document_changes.articles", "kb.articles", article(number))
    with stages(env, tmp_path, "vecsync-embedder-worker", "vecsync-upserter") as running:
        upserter = running["vecsync-upserter"]
        tickets = UpserterStore(upserter.base, "tickets", 10, api_key=KEY)
        articles = UpserterStore(upserter.base, "kb_articles", 10, api_key=KEY)
        wait_for(lambda: tickets.count() == 5 and articles.count() == 5, timeout=60, what="both collections filled")
        query = tickets.search([0.1] * 384, limit=10)[0]
        urgent = tickets.search([0.1] * 384, limit=10, match={"meta.priority": {"gte": 4}})
        assert sorted(hit.payload["mongo_id"] for hit in urgent) == ["t4", "t5"]
        assert query.payload["sync"] == "tickets"
        assert UpserterStore(upserter.base, "", 10, api_key=KEY).count() == 5  # no collection named: the first
        assert 'sync="articles"' in running["vecsync-embedder-worker"].metrics()
        metrics = upserter.metrics()
        assert (
            'vecsync_messages_processed_total{group="qdrant_upserters",stage="upserter",stream="embedded_documents.tickets",'
            'sync="tickets"}' in metrics
        )
    stores = embedded_stores(Path(env["DATA_DIR"]), {"tickets": {}, "kb_articles": {}})
    try:
        ticket_points, article_points = points(stores["tickets"]), points(stores["kb_articles"])
        assert sorted(ticket_points) == [f"t{n}" for n in range(1, 6)]
        assert sorted(article_points) == [f"a{n}" for n in range(1, 6)]
        assert ticket_points["t2"]["meta"] == {"priority": 2} and ticket_points["t2"]["tags"] == ["printer", "paper"]
        assert article_points["a1"]["author"] == {"name": "Kim"} and article_points["a1"]["sync"] == "articles"
        assert "meta" not in article_points["a1"]
        assert index_types(stores["tickets"]) == {
            "mongo_id": "keyword",
            "status": "keyword",
            "meta.priority": "integer",
            "tags": "keyword",
        }
        assert index_types(stores["kb_articles"]) == {"mongo_id": "keyword", "author.name": "keyword"}
    finally:
        for store in stores.values():
            store.close()
    # Each sync's hint is its own.
    assert redis_client.hlen("vecsync:upserter:applied_text.tickets") == 5
    assert redis_client.hlen("vecsync:upserter:applied_text.articles") == 5
    assert not redis_client.exists("vecsync:upserter:applied_text")


def test_two_syncs_share_one_collection_with_the_indexes_of_both(
    environment: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = with_config(environment, tmp_path, ONE_COLLECTION)
    for number in range(1, 4):
        publish(redis_client, "raw_document_changes.tickets", "app.tickets", ticket(number))
        publish(redis_client, "raw_document_changes.articles", "kb.articles", article(number))
    # The same _id in both MongoDB collections: their points are not the same point.
    publish(redis_client, "raw_document_changes.tickets", "app.tickets", {**ticket(9), "_id": "same"})
    publish(redis_client, "raw_document_changes.articles", "kb.articles", {**article(9), "_id": "same"})
    with stages(env, tmp_path, "vecsync-embedder-worker", "vecsync-upserter") as running:
        search = UpserterStore(running["vecsync-upserter"].base, "search", 10, api_key=KEY)
        wait_for(lambda: search.count() == 8, timeout=60, what="both syncs' points in the one collection")
        rated = search.search([0.1] * 384, limit=10, match={"rating": {"gt": 1.0}})
        assert sorted(hit.payload["mongo_id"] for hit in rated) == ["a3", "same"]
        assert {hit.payload["sync"] for hit in rated} == {"articles"}
    [store] = embedded_stores(Path(env["DATA_DIR"]), {"search": {}}).values()
    try:
        both = store.payloads([point_id("app.tickets", "same"), point_id("kb.articles", "same")])
        assert sorted(payload["sync"] for payload in both.values()) == ["articles", "tickets"]
        assert index_types(store) == {
            "mongo_id": "keyword",
            "meta.priority": "integer",
            "author.name": "keyword",
            "rating": "float",
        }
    finally:
        store.close()


def test_a_sync_whose_stage_is_paused_does_not_stall_the_other(
    environment: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = with_config(environment, tmp_path, TWO_COLLECTIONS)
    # Vectors of another size than the collection's, and none that fits: the tickets' upserter pauses on them.
    for number in range(3):
        bad = EmbeddedDocument(
            "upsert", "app.tickets", f"bad{number}", 1.0, f"{number + 1}-0", [0.1] * 3, {"mongo_id": f"bad{number}"}
        )
        redis_client.xadd("embedded_documents.tickets", bad.to_fields())
    for number in range(1, 4):
        publish(redis_client, "raw_document_changes.articles", "kb.articles", article(number))
    with stages(env, tmp_path, "vecsync-embedder-worker", "vecsync-upserter") as running:
        upserter = running["vecsync-upserter"]
        articles = UpserterStore(upserter.base, "kb_articles", 10, api_key=KEY)
        wait_for(lambda: articles.count() == 3, timeout=60, what="the articles written past the paused tickets")
        wait_for(lambda: "paused" in upserter.healthz(), timeout=30, what="the tickets' upserter paused")
        assert "3 dimensions" in upserter.healthz() and upserter.healthz().startswith("ok")
        assert (
            'vecsync_consumer_paused{group="qdrant_upserters",stage="upserter",stream="embedded_documents.tickets",'
            'sync="tickets"} 1.0' in upserter.metrics()
        )
        # A ticket embedded at the right size: the pause ends, the misfits go to the dead letters.
        publish(redis_client, "raw_document_changes.tickets", "app.tickets", ticket(1))
        tickets = UpserterStore(upserter.base, "tickets", 10, api_key=KEY)
        wait_for(lambda: tickets.count() == 1, timeout=60, what="the ticket written once the pause ended")
        wait_for(lambda: redis_client.xlen("embedded_documents.tickets:dlq") == 3, timeout=30, what="misfits")
    assert redis_client.xlen("embedded_documents.articles:dlq") == 0


def test_an_invalid_definition_file_stops_both_stages_with_exit_2(environment: dict[str, str], tmp_path: Path) -> None:
    env = with_config(environment, tmp_path, "syncs:\n  - name: tickets\n    mongo_colection: tickets\n")
    for command in ("vecsync-embedder-worker", "vecsync-upserter"):
        done = subprocess.run(
            [str(BIN / command)],
            env={**env, "METRICS_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "mongo_colection" in done.stderr and "did you mean 'mongo_collection'" in done.stderr
        assert "Traceback" not in done.stderr


def test_the_stream_figures_name_the_stream_and_the_sync(redis_client: redis.Redis) -> None:
    redis_client.xadd("raw_document_changes.tickets", {"a": "1"})
    registry = CollectorRegistry()
    registry.register(
        StreamStatsCollector(
            redis_client,
            [
                WatchedStream("raw_document_changes.tickets", "embedding_processors", "tickets"),
                ("raw_document_changes", "embedding_processors"),
            ],
        )
    )
    lengths = {
        (sample.labels["stream"], sample.labels["sync"]): sample.value
        for metric in registry.collect()
        if metric.name == "vecsync_stream_length"
        for sample in metric.samples
    }
    assert lengths == {("raw_document_changes.tickets", "tickets"): 1, ("raw_document_changes", "default"): 0}


def test_a_change_embedded_again_is_read_from_mongodb_within_the_syncs_filter(
    redis_client: redis.Redis, redis_url: str, mongo_uri: str, mongo_collection: Any, tmp_path: Path
) -> None:
    from upserter.embed_again import EmbedAgain
    from upserter.settings import UpserterSettings
    from vecsync.sync import Sync
    from vecsync.syncs import settings_for

    database, name = mongo_collection.database.name, mongo_collection.name
    sync = Sync(
        name="tickets",
        mongo_database=database,
        mongo_collection=name,
        qdrant_collection="tickets",
        text_fields=("subject",),
        payload_fields=("status",),
        max_text_chars=1000,
        stage1_stream="raw_document_changes.tickets",
        stage2_stream="embedded_documents.tickets",
        filter={"status": {"$ne": "spam"}},
        structured=True,
    )
    settings = settings_for(UpserterSettings(redis_url=redis_url, mongo_uri=mongo_uri, data_dir=tmp_path), sync)
    mongo_collection.insert_many(
        [{"_id": "kept", "subject": "a", "status": "open"}, {"_id": "out", "subject": "b", "status": "spam"}]
    )
    again = EmbedAgain(settings, redis_client, mongo_collection)
    for mongo_id in ("kept", "out"):
        payload_only = EmbeddedDocument(
            "payload", f"{database}.{name}", mongo_id, 1.0, "1-0", None, {"mongo_id": mongo_id}
        )
        again._embed_current_state(payload_only)
    published = {
        fields["mongo_id"]: fields["op"] for _id, fields in redis_client.xrange("raw_document_changes.tickets")
    }
    assert published == {"kept": "upsert", "out": "delete"}, "outside the filter, a document reads as gone"
