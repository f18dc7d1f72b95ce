"""The pipeline with the real all-MiniLM-L6-v2 model: vectors that mean something."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.pipeline import Pipeline
from tests.support.servers import Server

pytestmark = pytest.mark.slow


def encode(api: Server, text: str) -> list[float]:
    response = requests.post(f"http://127.0.0.1:{api.port}/encode", json={"text": text}, timeout=30)
    response.raise_for_status()
    return list(response.json()["embedding"])


def test_model_vectors_are_normalised_384_dims(model_api: Server) -> None:
    body = requests.post(
        f"http://127.0.0.1:{model_api.port}/encode_batch", json={"texts": ["hello world", "bonjour"]}, timeout=30
    ).json()
    assert body["model"] == "all-MiniLM-L6-v2" and body["dim"] == 384
    for vector in body["embeddings"]:
        assert len(vector) == 384
        assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-3)


def test_search_finds_the_relevant_document_and_follows_updates(pipeline: Pipeline, model_api: Server) -> None:
    pipeline.embedding_url = f"http://127.0.0.1:{model_api.port}"
    pipeline.collection.insert_many(
        [
            {
                "_id": "billing",
                "subject": "Charged twice this month",
                "content": "Please refund the duplicate payment.",
            },
            {"_id": "printer", "subject": "Printer keeps jamming", "content": "Paper gets stuck in tray 2."},
            {"_id": "login", "subject": "Cannot sign in", "content": "The two-factor code is always rejected."},
        ]
    )
    pipeline.drain()
    hits = pipeline.store.search(encode(model_api, "money back for a double charge"), limit=3)
    assert hits[0].payload["mongo_id"] == "billing"

    pipeline.collection.update_one(
        {"_id": "printer"}, {"$set": {"subject": "Refund request", "content": "I was billed twice, refund me."}}
    )
    pipeline.collection.delete_one({"_id": "billing"})
    pipeline.drain()
    hits = pipeline.store.search(encode(model_api, "money back for a double charge"), limit=3)
    assert [hit.payload["mongo_id"] for hit in hits][:1] == ["printer"]
    assert "billing" not in {hit.payload["mongo_id"] for hit in hits}
    pipeline.assert_matches_mongo()


def test_concurrent_single_texts_get_their_own_vectors(model_api: Server) -> None:
    """Single-text requests merged by dynamic batching each get the vector of their own text."""
    texts = [f"ticket {i}: the {'printer' if i % 2 else 'invoice'} is broken" + " again" * (i % 9) for i in range(48)]
    reference = requests.post(
        f"http://127.0.0.1:{model_api.port}/encode_batch", json={"texts": texts}, timeout=60
    ).json()["embeddings"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        vectors = list(pool.map(lambda text: encode(model_api, text), texts))
    for got, expected in zip(vectors, reference, strict=True):
        # Padding differs between batches, so allow float noise, never another text's vector.
        assert sum(a * b for a, b in zip(got, expected, strict=True)) > 0.999
