"""A real embedding-api process serving the hash encoder and the packaged model together (EMBEDDING_MODELS): both
answer, each chunks with its own tokens, and the memory each model took is logged and in its gauge."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.servers import Server, start_embedding_api

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_model_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # EMBEDDING_BACKEND=hash: the hash-384 entry is the hash encoder, and the packaged model still runs on torch.
    server = start_embedding_api(
        tmp_path_factory.mktemp("two-models"),
        "hash",
        ready_timeout=180,
        EMBEDDING_MODELS="hash-384,all-MiniLM-L6-v2",
    )
    yield server
    server.stop()


def post(api: Server, path: str, body: dict) -> dict:  # type: ignore[type-arg]
    response = requests.post(f"http://127.0.0.1:{api.port}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_both_models_answer_each_with_its_own_vectors(two_model_api: Server) -> None:
    texts = ["How do I reset my password?", "I forgot my login password", "The parcel arrived broken"]
    hashed = post(two_model_api, "/encode_batch", {"texts": texts})
    assert hashed["model"] == "hash-384" and hashed["dim"] == 384
    real = post(two_model_api, "/encode_batch", {"texts": texts, "model": "all-MiniLM-L6-v2"})
    assert real["model"] == "all-MiniLM-L6-v2" and real["dim"] == 384
    vectors = np.asarray(real["embeddings"], dtype=np.float32)
    # The model's vectors carry meaning: the two password questions are closer to each other than to the parcel.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert not np.allclose(vectors, np.asarray(hashed["embeddings"], dtype=np.float32))
    openai = post(two_model_api, "/v1/embeddings", {"input": texts[:1], "model": "all-MiniLM-L6-v2"})
    assert openai["model"] == "all-MiniLM-L6-v2"
    assert np.allclose(openai["data"][0]["embedding"], vectors[0], atol=1e-6)
    listed = requests.get(f"http://127.0.0.1:{two_model_api.port}/v1/models", timeout=5).json()["data"]
    assert [model["id"] for model in listed] == ["hash-384", "all-MiniLM-L6-v2"]
    ready = requests.get(f"http://127.0.0.1:{two_model_api.port}/readyz", timeout=5).json()
    assert ready["model"] == "hash-384" and ready["backend"] == "hash"
    assert [(model["id"], model["backend"], model["max_tokens"]) for model in ready["models"]] == [
        ("hash-384", "hash", 256),
        ("all-MiniLM-L6-v2", "torch", 256),
    ]


def test_chunk_counts_in_the_named_models_tokens(two_model_api: Server) -> None:
    # Long words: the model's tokenizer cuts each into several pieces, the hash encoder counts each as one.
    text = " ".join(f"synchronisation{i}" for i in range(60))
    words = post(two_model_api, "/chunk", {"texts": [text], "tokens": 32})
    pieces = post(two_model_api, "/chunk", {"texts": [text], "tokens": 32, "model": "all-MiniLM-L6-v2"})
    assert words["model"] == "hash-384" and pieces["model"] == "all-MiniLM-L6-v2"
    assert len(words["spans"][0]) == 2  # 60 words, 30 per chunk
    assert len(pieces["spans"][0]) > 2 * len(words["spans"][0])


def test_the_memory_of_each_model_is_logged_and_in_its_gauge(two_model_api: Server) -> None:
    log = Path(two_model_api.log).read_text()
    assert re.search(r"Model hash-384 \(hash on cpu, 384 dimensions, 1 copy\) takes 0\.0 MiB: the hash encoder", log)
    line = re.search(
        r"Model all-MiniLM-L6-v2 \(torch on cpu, 384 dimensions, 1 copy\) takes ([0-9.]+) MiB: torch parameters and "
        r"buffers; the process's resident memory grew by ([0-9.]+) MiB while it loaded",
        log,
    )
    assert line, log[-3000:]
    # all-MiniLM-L6-v2 has 22.7 million float32 parameters: about 87 MiB.
    assert 80 < float(line.group(1)) < 95
    assert float(line.group(2)) > 0
    metrics = requests.get(f"http://127.0.0.1:{two_model_api.port}/metrics", timeout=5).text
    gauge = re.search(r'vecsync_embedding_model_memory_bytes\{model="all-MiniLM-L6-v2"\} ([0-9.e+]+)', metrics)
    assert gauge and 80 * 2**20 < float(gauge.group(1)) < 95 * 2**20
    assert 'vecsync_embedding_model_memory_bytes{model="hash-384"} 0.0' in metrics
    assert 'vecsync_embedding_model_info{backend="torch",device="cpu",dim="384",model="all-MiniLM-L6-v2"}' in metrics
