"""Hybrid search with the real model, end to end: the acceptance of hybrid search on the order-number dataset.

200 sample tickets, each naming one order number among its text (tests.support.order_tickets), go through the
pipeline (producer, embedder-worker with all-MiniLM-L6-v2, upserter) into an embedded collection made with
SPARSE_MODEL=bm25, so every point's BM25 vector is the one the upserter computed as it wrote it. Each query is
embedded as `vecsync search` embeds it and searched by document (VectorStore.search_documents), in hybrid mode
and, for comparison, dense alone. The defaults of the fusion were chosen by bench/fusion.py on this dataset; this
test checks them through the product's own path, where a regression in the sparse vectors written, the query's
terms, the prefetches or the weights shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from tests.support.order_tickets import ORDER_QUERIES, PARAPHRASE_QUERIES, order_tickets
from tests.support.pipeline import Pipeline
from tests.support.servers import Server
from vecsync.cli.settings import CliSettings
from vecsync.cli.store import embed_query
from vecsync.store.embedded import EmbeddedStore

pytestmark = pytest.mark.slow


@pytest.fixture
def hybrid_pipeline(
    redis_client: redis.Redis,
    redis_url: str,
    mongo_uri: str,
    mongo_collection: pymongo.collection.Collection[dict[str, Any]],
    model_api: Server,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    """The three stages with the real model, into a collection with BM25 vectors, filled with the tickets."""
    store = EmbeddedStore(tmp_path / "qdrant", "documents", 384, sparse_model="bm25")
    store.ensure_collection()
    pipeline = Pipeline(
        redis_client=redis_client,
        redis_url=redis_url,
        mongo_uri=mongo_uri,
        collection=mongo_collection,
        embedding_url=f"http://127.0.0.1:{model_api.port}",
        store=store,
        data_dir=tmp_path,
    )
    pipeline.collection.insert_many(order_tickets())
    pipeline.drain()
    try:
        yield pipeline
    finally:
        store.close()


def found_first(pipeline: Pipeline, queries: list[tuple[str, str]], *, hybrid: bool) -> list[bool]:
    """For each (ticket, query), whether the query finds its ticket first."""
    settings = CliSettings(embedding_url=pipeline.embedding_url)
    right = []
    for ticket, query in queries:
        vector = embed_query(settings, query)
        hits = pipeline.store.search_documents(vector, limit=5, text=query if hybrid else None)
        right.append(bool(hits) and hits[0].payload["mongo_id"] == ticket)
    return right


def test_hybrid_search_finds_order_numbers_and_keeps_the_meaning_matches(hybrid_pipeline: Pipeline) -> None:
    assert hybrid_pipeline.store.count() == 200
    assert hybrid_pipeline.store.sparse_vector() == "bm25"
    in_a_sentence = [(ticket, f"where is my order {number}?") for ticket, number in ORDER_QUERIES]
    results = {
        (kind, mode): sum(found_first(hybrid_pipeline, queries, hybrid=mode == "hybrid"))
        for kind, queries in (("order", ORDER_QUERIES), ("sentence", in_a_sentence), ("paraphrase", PARAPHRASE_QUERIES))
        for mode in ("dense", "hybrid")
    }
    print(f"\nfound first, of 20: {results}")
    assert results["order", "hybrid"] >= 19, results
    assert results["sentence", "hybrid"] >= 19, results
    assert results["paraphrase", "hybrid"] >= results["paraphrase", "dense"] - 2, results
    assert results["order", "dense"] <= 5, f"dense alone should miss most order numbers: {results}"
