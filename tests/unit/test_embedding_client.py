"""How the embedder-worker classifies the embedding-api's answers: retry, or dead-letter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedder_worker.embedding_client import EmbeddingClient
from tests.support.fake_api import FakeApi
from tests.support.servers import free_port
from vecsync.errors import PermanentError, TransientError


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def client(url: str) -> EmbeddingClient:
    return EmbeddingClient(url, dim=3, timeout_s=5)


def test_good_answer(api: FakeApi) -> None:
    api.body = {"embeddings": [[1, 0, 0], [0, 1, 0]]}
    assert client(api.url).embed(["a", "b"]) == [[1, 0, 0], [0, 1, 0]]


def test_unreachable_is_transient() -> None:
    with pytest.raises(TransientError, match="unreachable"):
        client(f"http://127.0.0.1:{free_port()}").embed(["a"])


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_busy_or_failing_service_is_transient(api: FakeApi, status: int) -> None:
    api.status, api.body = status, {"detail": "busy"}
    with pytest.raises(TransientError):
        client(api.url).embed(["a"])


def test_rejected_input_is_permanent(api: FakeApi) -> None:
    api.status, api.body = 422, {"detail": "Text 0 is empty"}
    with pytest.raises(PermanentError, match="Text 0 is empty"):
        client(api.url).embed(["a"])


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [([[1, 0]], "2 dimensions; EMBEDDING_DIM is 3"), ([[1, float("nan"), 0]], "NaN"), ([[1, "x", 0]], "non-numeric")],
)
def test_wrong_vectors_are_permanent(api: FakeApi, embeddings: list, message: str) -> None:  # type: ignore[type-arg]
    api.body = {"embeddings": embeddings}
    with pytest.raises(PermanentError, match=message):
        client(api.url).embed(["a"])
