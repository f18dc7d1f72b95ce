"""The embedding-api's HTTP contract, on the hash backend (the real model is covered in tests/integration)."""

import math

import pytest
from fastapi.testclient import TestClient

from embedding_api.app import create_app
from embedding_api.backends import HashEncoder
from embedding_api.settings import EmbeddingApiSettings


@pytest.fixture
def client() -> TestClient:
    settings = EmbeddingApiSettings(max_texts_per_request=3, max_chars_per_text=20)
    return TestClient(create_app(settings, HashEncoder(384)))


def test_encode_returns_one_unit_vector(client: TestClient) -> None:
    response = client.post("/encode", json={"text": "hello"})
    assert response.status_code == 200
    vector = response.json()["embedding"]
    assert len(vector) == 384
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-6)


def test_encode_batch_is_deterministic_and_describes_the_model(client: TestClient) -> None:
    body = client.post("/encode_batch", json={"texts": ["a", "b", "a"]}).json()
    assert body["dim"] == 384 and body["model"] == "sha256-hash-384"
    assert body["embeddings"][0] == body["embeddings"][2] != body["embeddings"][1]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"texts": ["a", "b", "c", "d"]}, 413, "MAX_TEXTS_PER_REQUEST=3"),
        ({"texts": ["x" * 21]}, 413, "MAX_CHARS_PER_TEXT=20"),
        ({"texts": ["ok", "  "]}, 422, "Text 1 is empty"),
        ({"texts": []}, 422, "at least one text"),
        ({"texts": ["ok", 5]}, 422, "texts.1"),
        ({"text": None}, 422, "texts"),
    ],
)
def test_bad_requests_get_a_clear_error(client: TestClient, body: dict, status: int, message: str) -> None:  # type: ignore[type-arg]
    response = client.post("/encode_batch", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["backend"] == "hash"
    client.post("/encode", json={"text": "x"})
    metrics = client.get("/metrics").text
    assert 'vecsync_embedding_requests_total{endpoint="/encode",status="200"}' in metrics
    assert 'vecsync_embedding_model_info{backend="hash"' in metrics
