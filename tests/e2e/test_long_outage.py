"""The embedding-api down far longer than CLAIM_IDLE_MS x MAX_DELIVERIES, with more embedder-workers than batches
and a worker restarted in the middle: every process real, as `make run` starts them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests
from bson import ObjectId

from tests.chaos.harness import ChaosResult, compare
from tests.support.servers import wait_for
from tests.support.stack import drained, running_stack, stack_settings
from vecsync.redis_client import connect
from vecsync_local.stack import LocalStack
from vecsync_local.supervisor import Child

CLAIM_IDLE_MS = 500
MAX_DELIVERIES = 2
OUTAGE_S = 10 * CLAIM_IDLE_MS * MAX_DELIVERIES / 1000
DOCUMENTS = 60
WORKERS = 7


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    # Every stage reads its settings from the environment, as in a container.
    monkeypatch.setenv("CLAIM_IDLE_MS", str(CLAIM_IDLE_MS))
    monkeypatch.setenv("MAX_DELIVERIES", str(MAX_DELIVERIES))
    monkeypatch.setenv("BACKOFF_MAX_S", "0.5")
    with running_stack(
        stack_settings(tmp_path / "data", embedding_backend="hash", embedder_workers=WORKERS)
    ) as running:
        yield running


def child(stack: LocalStack, name: str) -> Child:
    return next(c for c in [*stack.servers, *stack.stages] if c.env.get("CONSUMER_NAME", c.name) == name)


def texts_embedded(stack: LocalStack) -> float:
    text = requests.get(stack.settings.embedding_url + "/metrics", timeout=5).text
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith("vecsync_embedding_texts_total ")]
    return float(value)


@pytest.mark.slow
def test_seven_workers_wait_out_a_long_embedding_api_outage_and_embed_each_change_once(stack: LocalStack) -> None:
    settings = stack.settings
    redis_client = connect(settings.redis_url)
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
    collection = mongo[settings.mongo_database][settings.mongo_collection]
    api = child(stack, "embedding-api")
    try:
        api.paused = True
        api.stop()
        collection.insert_many(
            [{"_id": ObjectId(), "subject": f"ticket {n}", "content": f"printer {n} is on fire"} for n in range(30)]
        )
        collection.insert_many(
            [{"_id": f"s{n}", "subject": f"ticket {n}", "content": "login fails"} for n in range(30)]
        )
        wait_for(
            lambda: int(redis_client.xpending("raw_document_changes", "embedding_processors")["pending"]) == DOCUMENTS,
            timeout=60,
            what="the workers to hold every change",
        )
        time.sleep(OUTAGE_S / 2)
        # SIGTERM the worker holding the batch in the middle of the outage; the supervisor starts it again.
        consumers = redis_client.xinfo_consumers("raw_document_changes", "embedding_processors")
        holders = [c["name"] for c in consumers if c["pending"]]
        assert holders, "the changes left the workers' hands during the outage"
        child(stack, holders[0]).stop()
        time.sleep(OUTAGE_S / 2)
        assert redis_client.xlen("raw_document_changes:dlq") == 0
        api.paused = False  # the supervisor starts it again
        wait_for(lambda: texts_embedded(stack) >= 0, timeout=120, what="the embedding-api to return")
        wait_for(lambda: drained(settings), timeout=120, interval=0.5, what="the backlog to drain")
        assert redis_client.xlen("raw_document_changes:dlq") == 0
        assert redis_client.xlen("embedded_documents:dlq") == 0
        assert texts_embedded(stack) == DOCUMENTS, "each change is embedded once"
        result = ChaosResult(seed=0, operations=DOCUMENTS, documents_in_mongo=collection.count_documents({}))
        stack.stop_stages()  # the upserter releases the embedded store
        compare(collection, settings, result)
        assert result.passed and result.documents_in_mongo == DOCUMENTS, result
    finally:
        mongo.close()
        redis_client.close()
