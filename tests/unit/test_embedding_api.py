"""The embedding-api's HTTP contract, on the hash backend (the real model is covered in tests/integration)."""

import base64
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedding_api import backends, model_folder, worker_layout
from embedding_api.app import create_app
from embedding_api.backends import HashEncoder
from embedding_api.settings import EmbeddingApiSettings


@pytest.fixture
def client() -> TestClient:
    settings = EmbeddingApiSettings(max_texts_per_request=3, max_chars_per_text=20)
    return TestClient(create_app(settings, HashEncoder(384)))


def test_encode_returns_one_unit_vector_and_names_the_model(client: TestClient) -> None:
    response = client.post("/encode", json={"text": "hello"})
    assert response.status_code == 200
    vector = response.json()["embedding"]
    assert len(vector) == 384
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-6)
    assert response.json()["model"] == "hash-384"


def test_encode_batch_is_deterministic_and_describes_the_model(client: TestClient) -> None:
    body = client.post("/encode_batch", json={"texts": ["a", "b", "a"]}).json()
    assert body["dim"] == 384 and body["model"] == "hash-384"
    assert body["embeddings"][0] == body["embeddings"][2] != body["embeddings"][1]


def test_base64_vectors_are_the_float_vectors_packed(client: TestClient) -> None:
    texts = ["a", "b"]
    floats = client.post("/encode_batch", json={"texts": texts}).json()["embeddings"]
    packed = client.post("/encode_batch", json={"texts": texts, "encoding_format": "base64"}).json()["embeddings"]
    unpacked = [np.frombuffer(base64.b64decode(item), dtype="<f4") for item in packed]
    assert np.allclose(unpacked, floats, atol=1e-7)
    single = client.post("/encode", json={"text": "b", "encoding_format": "base64"}).json()["embedding"]
    assert single == packed[1]
    refused = client.post("/encode_batch", json={"texts": texts, "encoding_format": "hex"})
    assert refused.status_code == 422 and "encoding_format" in refused.json()["detail"]


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


def test_encode_reports_truncation(client: TestClient) -> None:
    settings = EmbeddingApiSettings(max_chars_per_text=10_000)
    long_client = TestClient(create_app(settings, HashEncoder(384)))
    body = long_client.post("/encode_batch", json={"texts": ["short", "word " * 300]}).json()
    assert body["truncated"] == [False, True]
    assert long_client.post("/encode", json={"text": "short"}).json()["truncated"] is False
    assert "vecsync_embedding_truncated_texts_total 1.0" in long_client.get("/metrics").text


def test_openai_embeddings(client: TestClient) -> None:
    single = client.post("/v1/embeddings", json={"input": "hello", "model": "anything"}).json()
    assert single["object"] == "list" and single["model"] == "hash-384"
    assert single["data"][0]["index"] == 0 and len(single["data"][0]["embedding"]) == 384
    assert single["usage"]["prompt_tokens"] == 3
    batch = client.post("/v1/embeddings", json={"input": ["hello", "world"]}).json()
    assert [item["embedding"] for item in batch["data"]] == client.post(
        "/encode_batch", json={"texts": ["hello", "world"]}
    ).json()["embeddings"]
    encoded = client.post("/v1/embeddings", json={"input": ["hello"], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, single["data"][0]["embedding"], atol=1e-6)
    assert client.get("/v1/models").json()["data"][0]["id"] == "hash-384"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": [1, 2, 3]}, 422, "token arrays are not supported"),
        ({"input": []}, 422, "at least one text"),
        ({"input": ""}, 422, "Text 0 is empty"),
        ({"input": ["a"] * 4}, 413, "MAX_TEXTS_PER_REQUEST=3"),
        ({"input": "a", "dimensions": 12}, 422, "dimensions=12"),
        ({"model": "x"}, 422, "input"),
    ],
)
def test_openai_errors_use_openai_shape(client: TestClient, body: dict, status: int, message: str) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "must be a JSON object")],
)
def test_bodies_that_are_not_json_objects_get_422(client: TestClient, content: bytes, message: str) -> None:
    response = client.post("/encode_batch", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_huge_requests_are_refused_clearly() -> None:
    settings = EmbeddingApiSettings(max_request_bytes=1_000_000)
    big = TestClient(create_app(settings, HashEncoder(384)))
    too_many = big.post("/encode_batch", json={"texts": ["x"] * 10_000})
    assert too_many.status_code == 413 and "MAX_TEXTS_PER_REQUEST=512" in too_many.json()["detail"]
    too_long = big.post("/encode", json={"text": "x" * 200_000})
    assert too_long.status_code == 413 and "MAX_CHARS_PER_TEXT=100000" in too_long.json()["detail"]
    too_big = big.post("/encode", json={"text": "x" * 1_000_000})
    assert too_big.status_code == 413 and "MAX_REQUEST_BYTES=1000000" in too_big.json()["detail"]
    assert big.get("/healthz").status_code == 200


class SlowEncoder(HashEncoder):
    def __init__(self, delay_s: float) -> None:
        super().__init__(384)
        self.delay_s = delay_s

    def encode(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().encode(texts)


def test_a_full_queue_answers_503_with_retry_after() -> None:
    settings = EmbeddingApiSettings(max_queue_texts=2, max_texts_per_request=2, max_batch_size=1)
    slow = TestClient(create_app(settings, SlowEncoder(0.5)))
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: slow.post("/encode", json={"text": f"t{i}"}), range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    refused = next(response for response in responses if response.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "MAX_QUEUE_TEXTS=2" in refused.json()["detail"]


def test_health_and_metrics_answer_while_the_model_works() -> None:
    settings = EmbeddingApiSettings()
    slow = TestClient(create_app(settings, SlowEncoder(1.0)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        busy = pool.submit(slow.post, "/encode", json={"text": "slow"})
        time.sleep(0.2)
        started = time.perf_counter()
        assert slow.get("/healthz").status_code == 200
        metrics = slow.get("/metrics").text
        assert time.perf_counter() - started < 0.5
        assert "vecsync_embedding_queue_texts 1.0" in metrics
        assert busy.result().status_code == 200
    metrics = slow.get("/metrics").text
    for name in ("vecsync_embedding_model_batch_tokens_bucket", "vecsync_embedding_model_call_duration_seconds"):
        assert name in metrics


def test_readyz_waits_for_the_model() -> None:
    release = threading.Event()

    def load() -> HashEncoder:
        release.wait(10)
        return HashEncoder(384)

    loading = TestClient(create_app(EmbeddingApiSettings(), load=load))
    assert loading.get("/healthz").status_code == 200
    assert loading.get("/readyz").status_code == 503
    early = loading.post("/encode", json={"text": "x"})
    assert early.status_code == 503 and "Retry-After" in early.headers
    release.set()
    loading.app.state.batcher.wait_ready(10)  # type: ignore[attr-defined]
    assert loading.get("/readyz").json()["status"] == "ready"
    assert loading.post("/encode", json={"text": "x"}).status_code == 200


def test_a_configured_api_key_is_required_except_on_health_and_metrics() -> None:
    settings = EmbeddingApiSettings(embedding_api_key="s3cret-key")
    with TestClient(create_app(settings, HashEncoder(384))) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
            response = client.post("/encode", json={"text": "x"}, headers=headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "EMBEDDING_API_KEY" in response.text and "s3cret-key" not in response.text
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        authorized = {"Authorization": "Bearer s3cret-key"}
        assert client.post("/encode", json={"text": "x"}, headers=authorized).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    ("settings", "workers", "threads"),
    [
        ({"embedding_backend": "torch"}, 1, 0),
        ({"embedding_backend": "onnx"}, 1, 0),
        ({"embedding_backend": "onnx-int8"}, 2, 1),
        ({"embedding_backend": "onnx-int8", "model_workers": 1}, 1, 0),
        ({"embedding_backend": "torch", "model_workers": 2}, 2, 1),
    ],
)
def test_model_copies_and_their_threads_by_backend(
    monkeypatch: pytest.MonkeyPatch,
    settings: dict,
    workers: int,
    threads: int,  # type: ignore[type-arg]
) -> None:
    monkeypatch.setattr(worker_layout, "_usable_cores", lambda: 2)
    configured = EmbeddingApiSettings(**settings)
    assert worker_layout.model_workers(configured) == workers
    assert worker_layout.cpu_threads_per_worker(configured) == threads  # 0: the backend's own default, every core


@pytest.mark.parametrize(
    ("configured", "backend", "device", "threads", "expected"),
    [
        (None, "torch", "cpu", 0, 8),
        (None, "onnx", "cpu", 0, 4),
        (None, "onnx-int8", "cpu", 0, 4),
        (None, "onnx-int8", "cpu", 1, 1),
        (None, "onnx", "cpu", 1, 4),
        (None, "torch", "cuda", 0, 128),
        (16, "onnx-int8", "cpu", 1, 16),
    ],
)
def test_forward_pass_size_by_backend_device_and_threads(
    configured: int | None, backend: str, device: str, threads: int, expected: int
) -> None:
    assert backends.forward_batch_size(configured, backend, device, threads) == expected


class PoisonEncoder(HashEncoder):
    """Fails on every model call that holds the text "poison", like a model that cannot read one input."""

    def __init__(self) -> None:
        super().__init__(384)

    def encode(self, texts: list[str]) -> np.ndarray:
        if "poison" in texts:
            raise ValueError("the model cannot read this text")
        return super().encode(texts)


POISON_ERROR = "ValueError: the model cannot read this text"


@pytest.mark.parametrize(
    ("path", "body", "index"),
    [
        ("/encode", {"text": "poison"}, 0),
        ("/encode_batch", {"texts": ["fine", "poison", "also fine"]}, 1),
        ("/v1/embeddings", {"input": ["fine", "also fine", "poison"]}, 2),
    ],
)
def test_a_text_the_model_fails_on_gets_422_naming_its_index_and_the_error(
    path: str,
    body: dict,  # type: ignore[type-arg]
    index: int,
) -> None:
    client = TestClient(create_app(EmbeddingApiSettings(), PoisonEncoder()))
    response = client.post(path, json=body)
    assert response.status_code == 422
    answer = response.json()
    failed = answer["error"]["failed"] if path.startswith("/v1/") else answer["failed"]
    assert failed == [{"index": index, "error": POISON_ERROR}]
    message = answer["error"]["message"] if path.startswith("/v1/") else answer["detail"]
    assert f"text {index}" in message and POISON_ERROR in message
    assert client.post("/encode_batch", json={"texts": ["fine"]}).status_code == 200
    assert "vecsync_embedding_failed_texts_total" in client.get("/metrics").text


def test_a_model_that_fails_on_everything_answers_503_never_4xx() -> None:
    class BrokenEncoder(HashEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    client = TestClient(create_app(EmbeddingApiSettings(), BrokenEncoder(384)))
    for path, body in [
        ("/encode", {"text": "a"}),
        ("/encode_batch", {"texts": ["a", "b"]}),
        ("/v1/embeddings", {"input": "a"}),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 503, path
        assert "Retry-After" in response.headers
        assert "known-good text" in response.text


def test_the_model_identity_names_the_model_whatever_the_backend(tmp_path: Path) -> None:
    for backend in ("torch", "onnx", "onnx-int8"):
        assert (
            model_folder.model_folder_and_identity(EmbeddingApiSettings(embedding_backend=backend))[1]
            == "all-MiniLM-L6-v2"
        )
    folders = {}
    for name, weights in [("first", b"weights one"), ("second", b"weights two"), ("copy", b"weights one")]:
        folder = tmp_path / name / "model"
        (folder / "1_Pooling").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
        folders[name] = model_folder.model_folder_and_identity(EmbeddingApiSettings(model_path=folder))
    assert folders["first"][0] == tmp_path / "first" / "model"
    identities = {name: identity for name, (_path, identity) in folders.items()}
    assert identities["first"] != identities["second"], "another model in a folder of the same name"
    assert identities["first"] == identities["copy"], "the same model in another place"
    assert identities["first"].startswith("model@")
