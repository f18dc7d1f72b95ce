"""An embedding-api serving several models (EMBEDDING_MODELS), on hash encoders: each request names its model or gets
the default, every listing names them all, an unknown model is a 404 naming those served, and the settings refuse a
list they cannot serve (the real model beside a hash encoder: tests/integration/test_embedding_api_models.py)."""

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedding_api import model_pool, worker_layout
from embedding_api.app import create_app
from embedding_api.backends import Encoder
from embedding_api.model_folder import default_model_path, folder_identity
from embedding_api.served_models import ModelSource, served_models
from embedding_api.settings import EmbeddingApiSettings
from vecsync import settings as settings_module
from vecsync.errors import ConfigurationError

SERVED = "hash-384, hash-256"


def wait_until_every_model_loaded(client: TestClient) -> None:
    for model in client.app.state.models:  # type: ignore[attr-defined]
        assert model.batcher.wait_ready(10)


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = EmbeddingApiSettings(embedding_models="hash-384,hash-256", max_chars_per_text=10_000)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as served:
        wait_until_every_model_loaded(served)
        yield served


def test_each_model_answers_with_its_own_vectors_and_the_first_is_the_default(client: TestClient) -> None:
    default = client.post("/encode_batch", json={"texts": ["a", "b"]}).json()
    assert default["model"] == "hash-384" and default["dim"] == 384 and len(default["embeddings"][0]) == 384
    named = client.post("/encode_batch", json={"texts": ["a", "b"], "model": "hash-256"}).json()
    assert named["model"] == "hash-256" and named["dim"] == 256 and len(named["embeddings"][1]) == 256
    assert client.post("/encode_batch", json={"texts": ["a", "b"], "model": "hash-384"}).json() == default
    one = client.post("/encode", json={"text": "a", "model": "hash-256"}).json()
    assert one["model"] == "hash-256" and one["embedding"] == named["embeddings"][0]
    assert client.post("/encode", json={"text": "a"}).json()["model"] == "hash-384"
    openai = client.post("/v1/embeddings", json={"input": ["a"], "model": "hash-256"}).json()
    assert openai["model"] == "hash-256" and openai["data"][0]["embedding"] == named["embeddings"][0]
    assert client.post("/v1/embeddings", json={"input": ["a"]}).json()["model"] == "hash-384"
    refused = client.post("/v1/embeddings", json={"input": "a", "model": "hash-256", "dimensions": 384})
    assert refused.status_code == 422 and "this model has 256" in refused.json()["error"]["message"]


def test_every_listing_names_every_model_the_default_first(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["data"]
    assert listed == [
        {"id": "hash-384", "object": "model", "owned_by": "vecsync", "dim": 384},
        {"id": "hash-256", "object": "model", "owned_by": "vecsync", "dim": 256},
    ]
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "hash-384" and ready["dim"] == 384
    assert ready["backend"] == "hash" and ready["device"] == "cpu" and ready["max_tokens"] == 256
    assert ready["models"] == [
        {"id": "hash-384", "backend": "hash", "dim": 384, "device": "cpu", "max_tokens": 256},
        {"id": "hash-256", "backend": "hash", "dim": 256, "device": "cpu", "max_tokens": 256},
    ]
    metrics = client.get("/metrics").text
    for model, dim in [("hash-384", 384), ("hash-256", 256)]:
        assert f'vecsync_embedding_model_info{{backend="hash",device="cpu",dim="{dim}",model="{model}"}} 1.0' in metrics
        assert f'vecsync_embedding_model_memory_bytes{{model="{model}"}} 0.0' in metrics


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/encode", {"text": "a", "model": "all-MiniLM-L6-v2"}),
        ("/encode_batch", {"texts": ["a"], "model": "hash-128"}),
        ("/chunk", {"texts": ["a"], "model": "hash-128"}),
        ("/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}),
    ],
)
def test_an_unknown_model_is_a_404_naming_the_models_served(client: TestClient, path: str, body: dict) -> None:  # type: ignore[type-arg]
    response = client.post(path, json=body)
    assert response.status_code == 404
    answer = response.json()
    message = answer["error"]["message"] if path.startswith("/v1/") else answer["detail"]
    assert message.startswith(f"Model {body['model']!r} is not served here; this embedding-api serves {SERVED} ")
    assert "EMBEDDING_MODELS" in message


def test_chunk_splits_with_the_named_model(client: TestClient) -> None:
    text = " ".join(f"word{i}" for i in range(40))
    default = client.post("/chunk", json={"texts": [text], "tokens": 12}).json()
    named = client.post("/chunk", json={"texts": [text], "tokens": 12, "model": "hash-256"}).json()
    assert default["model"] == "hash-384" and named["model"] == "hash-256"
    # The hash encoders' word split: ten words per chunk beside the two stand-in special tokens.
    assert len(named["spans"][0]) == 4 and named["spans"] == default["spans"]
    assert named["max_tokens"] == 256


def test_ready_only_once_every_model_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_load = model_pool.load_model

    def slow_hash_256(source: ModelSource, settings: EmbeddingApiSettings) -> Encoder:
        if source.identity == "hash-256":
            release.wait(10)
        return real_load(source, settings)

    monkeypatch.setattr(model_pool, "load_model", slow_hash_256)
    settings = EmbeddingApiSettings(embedding_models="hash-384,hash-256")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as loading:
        assert loading.get("/readyz").json() == {"status": "loading"}
        assert loading.get("/v1/models").json() == {"object": "list", "data": []}
        early = loading.post("/encode_batch", json={"texts": ["a"], "model": "hash-256"})
        assert early.status_code == 503 and "Retry-After" in early.headers
        release.set()
        wait_until_every_model_loaded(loading)
        assert loading.get("/readyz").json()["status"] == "ready"
        assert len(loading.get("/v1/models").json()["data"]) == 2


def test_with_the_list_set_an_openai_request_must_name_a_served_model() -> None:
    # Unset, any name gets the one model, as before (test_embedding_api.test_openai_embeddings); set, none but theirs.
    settings = EmbeddingApiSettings(embedding_models="hash-384")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as one:
        wait_until_every_model_loaded(one)
        assert one.post("/v1/embeddings", json={"input": "a", "model": "hash-384"}).status_code == 200
        refused = one.post("/v1/embeddings", json={"input": "a", "model": "anything"})
        assert refused.status_code == 404 and "serves hash-384 " in refused.json()["error"]["message"]


def test_the_vecsync_endpoints_refuse_an_unknown_model_with_the_list_unset() -> None:
    with TestClient(create_app(EmbeddingApiSettings(embedding_backend="hash"))) as legacy:
        wait_until_every_model_loaded(legacy)
        assert legacy.post("/encode_batch", json={"texts": ["a"]}).json()["model"] == "hash-384"
        refused = legacy.post("/encode_batch", json={"texts": ["a"], "model": "all-MiniLM-L6-v2"})
        assert refused.status_code == 404 and "serves hash-384 " in refused.json()["detail"]
        assert legacy.post("/v1/embeddings", json={"input": "a", "model": "anything"}).json()["model"] == "hash-384"


def test_each_entry_is_loaded_on_its_backend(tmp_path: Path) -> None:
    packaged = Path(default_model_path())
    listed = EmbeddingApiSettings(embedding_backend="hash", embedding_models="hash-384,all-MiniLM-L6-v2")  # type: ignore[arg-type]
    assert served_models(listed) == [
        ModelSource("hash-384", "hash", hash_dim=384),
        ModelSource("all-MiniLM-L6-v2", "torch", packaged),
    ]
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    on_onnx = EmbeddingApiSettings(embedding_backend="onnx", embedding_models=f"{folder},hash-8")  # type: ignore[arg-type]
    identity = folder_identity(folder)
    assert re.fullmatch(r"my-model@[0-9a-f]{12}", identity)
    assert served_models(on_onnx) == [ModelSource(identity, "onnx", folder), ModelSource("hash-8", "hash", hash_dim=8)]
    # Unset: the one model of the older settings, exactly as before.
    assert served_models(EmbeddingApiSettings(embedding_backend="hash", embedding_dim=64)) == [
        ModelSource("hash-64", "hash", hash_dim=64)
    ]
    assert served_models(EmbeddingApiSettings()) == [ModelSource("all-MiniLM-L6-v2", "torch", packaged)]
    assert served_models(EmbeddingApiSettings(model_path=folder)) == [ModelSource(identity, "torch", folder)]


def test_a_hash_encoder_gets_one_copy_beside_an_onnx_int8_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_layout, "_usable_cores", lambda: 2)
    settings = EmbeddingApiSettings(embedding_backend="onnx-int8", embedding_models="hash-8,all-MiniLM-L6-v2")  # type: ignore[arg-type]
    assert worker_layout.model_workers(settings, "hash") == 1
    assert worker_layout.model_workers(settings, "onnx-int8") == 2


def test_settings_name_what_is_wrong_with_the_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refusal(value: str, **more: str) -> str:
        monkeypatch.setenv("EMBEDDING_MODELS", value)
        for name, setting in more.items():
            monkeypatch.setenv(name, setting)
        with pytest.raises(ConfigurationError) as raised:
            settings_module.load(EmbeddingApiSettings)
        return str(raised.value)

    missing = refusal(f"hash-384,{tmp_path / 'nowhere'}")
    assert "EMBEDDING_MODELS" in missing and "neither all-MiniLM-L6-v2, hash-<dim>" in missing
    assert "EMBEDDING_MODELS names hash-384 twice" in refusal("hash-384, hash-384")
    assert "neither" in refusal("hash-0384")
    assert "neither" in refusal("all-minilm-l6-v2")
    twins = [tmp_path / "a" / "model", tmp_path / "b" / "model"]
    for twin in twins:
        twin.mkdir(parents=True)
        (twin / "model.safetensors").write_bytes(b"the same weights")
    same = refusal(",".join(str(twin) for twin in twins))
    assert "names one model twice" in same and str(twins[0]) in same
    both = refusal("hash-384", MODEL_PATH=str(twins[0]))
    assert "MODEL_PATH" in both and "EMBEDDING_MODELS" in both
    monkeypatch.delenv("MODEL_PATH")
    monkeypatch.setenv("EMBEDDING_MODELS", " hash-384 , hash-256 ")
    assert settings_module.load(EmbeddingApiSettings).embedding_models == ["hash-384", "hash-256"]
    monkeypatch.setenv("EMBEDDING_MODELS", "")
    assert settings_module.load(EmbeddingApiSettings).embedding_models == []
