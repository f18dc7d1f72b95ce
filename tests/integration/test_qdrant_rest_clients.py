"""Applications read the embedded collection through the upserter's Qdrant REST API as they read a Qdrant server
(issue 28, acceptances 1 and 2): the seed's curl checks with the real curl, qdrant-client's QdrantClient(url=...),
and LangChain's QdrantVectorStore over it.

The pipeline embeds with the hash encoder of the test embedding-api; the queries are embedded by that same API, so
that a query holding a document's text finds that document first.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from langchain_core.embeddings import Embeddings
from langchain_qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models

from tests.support.pipeline import Pipeline
from tests.support.rest_upserter import Upserter, embed_stage_1, pipeline_environment, points_count, running_upserter
from tests.support.servers import wait_for

TICKETS = [
    ("t1", "Charged twice", "My card was charged twice for one order and I want a refund."),
    ("t2", "App crashes", "The mobile app crashes every time I open the settings page."),
    ("t3", "Password reset", "The password reset email never arrives in my inbox."),
    ("t4", "Printer jam", "The printer jams on the second page of every job."),
    ("t5", "Late delivery", "My parcel is a week late and the tracking page shows nothing."),
    ("t6", "Invoice address", "I need the invoice to show my company's address."),
]


class ApiEmbeddings(Embeddings):
    """LangChain's embeddings through the pipeline's embedding-api (POST /encode_batch), as an application would
    embed its queries with the model the collection was built with."""

    def __init__(self, url: str) -> None:
        self.url = url

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        reply = requests.post(self.url + "/encode_batch", json={"texts": texts}, timeout=30)
        reply.raise_for_status()
        return [list(map(float, vector)) for vector in reply.json()["embeddings"]]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@dataclass
class Served:
    upserter: Upserter
    embeddings: ApiEmbeddings
    texts: dict[str, str]  # each document's text as the pipeline embedded it (its points' payload ``text``), by id

    @property
    def base(self) -> str:
        return self.upserter.base


@pytest.fixture
def served(pipeline: Pipeline, tmp_path: Path) -> Iterator[Served]:
    pipeline.collection.insert_many(
        [{"_id": key, "subject": subject, "content": content} for key, subject, content in TICKETS]
    )
    embed_stage_1(pipeline)
    with running_upserter(tmp_path / "upserter", pipeline.redis_url, **pipeline_environment(pipeline)) as upserter:
        upserter.wait_for_collection()
        wait_for(lambda: points_count(upserter.base) == len(TICKETS), timeout=60, what=upserter.output())
        scrolled = requests.post(
            upserter.base + "/collections/documents/points/scroll", json={"limit": 100, "with_payload": True}
        )
        assert scrolled.status_code == 200, scrolled.text
        texts = {
            point["payload"]["mongo_id"]: point["payload"]["text"] for point in scrolled.json()["result"]["points"]
        }
        yield Served(upserter, ApiEmbeddings(pipeline.embedding_url), texts)


# --- acceptance 1: the seed's checks, with the real curl -----------------------------------------------------------


def curl(*args: str) -> tuple[int, Any]:
    """Run curl; its HTTP status and the JSON it received."""
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--write-out", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_the_seeds_curl_checks_answer_as_qdrant_does(served: Served) -> None:
    status, info = curl(served.base + "/collections/documents")
    assert status == 200 and info["status"] == "ok", info
    assert info["result"]["points_count"] == len(TICKETS)
    assert info["result"]["config"]["params"]["vectors"] == {"size": 384, "distance": "Cosine"}

    query = {"vector": served.embeddings.embed_query(served.texts["t3"]), "limit": 3, "with_payload": True}
    status, found = curl(
        "-X", "POST", served.base + "/collections/documents/points/search",
        "-H", "Content-Type: application/json", "-d", json.dumps(query),
    )  # fmt: skip
    assert status == 200, found
    hits = found["result"]
    assert len(hits) == 3 and hits[0]["payload"]["mongo_id"] == "t3", hits
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["score"] >= hits[1]["score"]

    status, refused = curl(served.base + "/collections/documents/points")
    assert status == 404, refused
    assert "points/scroll" in refused["status"]["error"] and "points/count" in refused["status"]["error"]

    status, counted = curl(
        "-X", "POST", served.base + "/collections/documents/points/count",
        "-H", "Content-Type: application/json", "-d", '{"exact": true}',
    )  # fmt: skip
    assert status == 200 and counted["result"] == {"count": len(TICKETS)}, counted


# --- acceptance 2: qdrant-client and LangChain ----------------------------------------------------------------------


def test_qdrant_client_lists_counts_scrolls_and_queries_the_collection(served: Served) -> None:
    client = QdrantClient(url=served.base, timeout=30)
    try:
        assert "documents" in [collection.name for collection in client.get_collections().collections]
        assert client.collection_exists("documents")
        assert client.get_collection("documents").points_count == len(TICKETS)
        assert client.count("documents", exact=True).count == len(TICKETS)
        owned = models.Filter(must=[models.FieldCondition(key="mongo_id", match=models.MatchValue(value="t2"))])
        assert client.count("documents", count_filter=owned, exact=True).count == 1

        seen: list[str] = []
        offset = None
        while True:  # pages of two, as an application walks a collection
            page, offset = client.scroll("documents", limit=2, offset=offset, with_payload=True)
            seen += [str(point.payload["mongo_id"]) for point in page if point.payload is not None]
            if offset is None:
                break
        assert sorted(seen) == sorted(key for key, _subject, _content in TICKETS)

        query = served.embeddings.embed_query(served.texts["t5"])
        hits = client.query_points("documents", query=query, limit=3, with_payload=True).points
        assert len(hits) == 3 and hits[0].payload is not None and hits[0].payload["mongo_id"] == "t5"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[0].score >= hits[1].score
        filtered = client.query_points("documents", query=query, query_filter=owned, limit=3).points
        [only] = filtered  # t2's one point, however far from the query
        [retrieved] = client.retrieve("documents", [only.id], with_payload=True)
        assert retrieved.payload is not None and retrieved.payload["mongo_id"] == "t2"
    finally:
        client.close()


def test_langchains_qdrant_store_answers_a_similarity_search_with_the_right_documents(served: Served) -> None:
    client = QdrantClient(url=served.base, timeout=30)
    try:
        store = QdrantVectorStore(
            client=client, collection_name="documents", embedding=served.embeddings, content_payload_key="text"
        )
        for key in ("t1", "t4"):
            found = store.similarity_search_with_score(served.texts[key], k=2)
            assert len(found) == 2
            document, score = found[0]
            assert document.page_content == served.texts[key]
            assert score == pytest.approx(1.0, abs=1e-4)
    finally:
        client.close()
