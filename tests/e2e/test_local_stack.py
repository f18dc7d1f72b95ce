"""The whole pipeline as separate processes, as `make run` starts it, under kills and concurrency."""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pymongo
import pytest

from embedding_api.backends import HashEncoder
from tests.support.servers import free_port, wait_for
from vecsync.documents import build_text, point_id
from vecsync.localstack import LocalStack, LocalStackSettings
from vecsync.settings import QdrantSettings
from vecsync.streams import connect, stream_stats
from vecsync.vectorstore import VectorStore

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "support_tickets.jsonl"
PAYLOAD_FIELDS = ("product", "customer", "owner", "subject")


def stack_settings(tmp_path: Path, **overrides: Any) -> LocalStackSettings:
    return LocalStackSettings(
        data_dir=tmp_path / "data",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        mongo_uri=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        embedding_url=f"http://127.0.0.1:{free_port()}",
        upserter_url=f"http://127.0.0.1:{free_port()}",
        producer_metrics_port=free_port(),
        embedder_metrics_port=free_port(),
        sample_data=SAMPLES,
        **overrides,
    )


def random_change(rng: random.Random, collection: Any, ids: list[str]) -> None:
    doc_id = rng.choice(ids)
    roll = rng.random()
    if roll < 0.15:
        collection.delete_one({"_id": doc_id})
    elif roll < 0.35:
        collection.replace_one(
            {"_id": doc_id}, {"subject": f"replaced {rng.random()}", "content": "r", "owner": "R"}, upsert=True
        )
    elif roll < 0.5:
        collection.update_one({"_id": doc_id}, {"$set": {"owner": f"owner {rng.randrange(5)}"}})
    else:
        collection.update_one(
            {"_id": doc_id}, {"$set": {"content": f"content {rng.random()}", "owner": "U"}}, upsert=True
        )


def drained(redis_url: str) -> bool:
    client = connect(redis_url)
    for stream, group in (("raw_document_changes", "embedding_processors"), ("embedded_documents", "qdrant_upserters")):
        stats = stream_stats(client, stream, group)
        if stats.lag or stats.pending:
            return False
    return True


def assert_qdrant_matches_mongo(collection: Any, settings: LocalStackSettings) -> None:
    source = settings.source
    store = VectorStore.open(QdrantSettings(), settings.data_dir.resolve())
    encoder = HashEncoder(384)
    try:
        expected = {}
        for document in collection.find():
            text = build_text(document, ["subject", "content"], 8192)
            if text:
                expected[str(document["_id"])] = (document, text)
        assert store.count() == len(expected), "extra or missing points"
        for mongo_id, (document, text) in expected.items():
            [record] = store.retrieve([point_id(source, mongo_id)], with_vectors=True)
            assert record.payload["text"] == text, f"stale point for {mongo_id}"
            for field in PAYLOAD_FIELDS:
                assert record.payload.get(field) == document.get(field), f"stale {field} for {mongo_id}"
            fresh = encoder.encode([text])[0]
            cosine = sum(a * b for a, b in zip(fresh, record.vector, strict=True))  # type: ignore[arg-type]
            assert math.isclose(cosine, 1.0, abs_tol=1e-5), f"stale vector for {mongo_id}"
    finally:
        store.close()


@pytest.mark.slow
def test_killed_stages_and_three_workers_still_converge(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, embedding_backend="hash", embedder_workers=3)
    stack = LocalStack(settings)
    supervisor = threading.Thread(target=stack.supervise, daemon=True)
    try:
        stack.start()
        total = stack.load_samples()
        supervisor.start()
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
        collection = client[settings.mongo_database][settings.mongo_collection]
        ids = [f"hot-{i}" for i in range(40)]
        rng = random.Random(20261129)
        for step in range(1500):
            random_change(rng, collection, ids)
            if step % 250 == 125:
                victim = rng.choice(stack.stages)
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)  # the supervisor restarts it
        collection.insert_one({"_id": "sentinel", "subject": "last change"})
        redis_client = connect(settings.redis_url)
        wait_for(
            lambda: any(
                f["mongo_id"] == "sentinel" for _id, f in redis_client.xrevrange("raw_document_changes", count=5)
            ),
            timeout=120,
            what="the producer to publish the last change",
        )
        wait_for(lambda: drained(settings.redis_url), timeout=180, what="every stage to drain")
        assert redis_client.xlen("raw_document_changes:dlq") == 0
        assert redis_client.xlen("embedded_documents:dlq") == 0
        assert collection.count_documents({}) > total
        stack.stop_stages()  # the upserter releases the embedded store
        assert_qdrant_matches_mongo(collection, settings)
        client.close()
    finally:
        stack.stop()


@pytest.mark.slow
def test_make_run_serves_search_until_ctrl_c(tmp_path: Path) -> None:
    """What a new user does: start the stack, search from another terminal, press Ctrl-C."""
    settings = stack_settings(tmp_path)
    env = {
        "DATA_DIR": str(settings.data_dir),
        "REDIS_URL": settings.redis_url,
        "MONGO_URI": settings.mongo_uri,
        "EMBEDDING_URL": settings.embedding_url,
        "UPSERTER_URL": settings.upserter_url,
        "PRODUCER_METRICS_PORT": str(settings.producer_metrics_port),
        "EMBEDDER_METRICS_PORT": str(settings.embedder_metrics_port),
        "SAMPLE_DATA": str(SAMPLES),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    log = tmp_path / "make-run.log"
    with open(log, "wb") as output:
        run = subprocess.Popen(
            [sys.executable, "-m", "vecsync.localstack"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: b"240 documents are searchable" in log.read_bytes(), timeout=400, what=f"make run (log {log})")
        vecsync = str(Path(sys.executable).parent / "vecsync")
        search = subprocess.run(
            [vecsync, "search", "I was charged twice and want my money back", "--limit", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert search.returncode == 0, search.stderr
        lines = [line for line in search.stdout.splitlines() if not line.startswith(" ")]
        assert len(lines) == 3
        assert any(word in lines[0].lower() for word in ("charge", "refund", "billed", "payment")), search.stdout
        status = subprocess.run([vecsync, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert "raw_document_changes / embedding_processors: length 240, lag 0, pending 0" in status.stdout
    finally:
        run.send_signal(signal.SIGINT)
        code = run.wait(120)
    assert code == 0, log.read_text()
    assert log.read_text().rstrip().endswith("Stopped.")
