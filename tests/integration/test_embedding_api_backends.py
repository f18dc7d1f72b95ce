"""The onnx-int8 backend against torch, the model each reply names, the API under abuse, and the CUDA path where a GPU
exists."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.servers import BIN, Server, free_port, wait_for

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "support_tickets.jsonl"


def sample_texts(count: int) -> list[str]:
    tickets = [json.loads(line) for line in SAMPLES.read_text().splitlines()[:count]]
    return [f"{ticket['subject']}\n\n{ticket['content']}" for ticket in tickets]


@pytest.fixture(scope="session")
def int8_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("int8-api")
    port = free_port()
    env = {
        **os.environ,
        "EMBEDDING_BACKEND": "onnx-int8",
        "ONNX_CACHE_DIR": str(workdir / "onnx-cache"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
    }
    server = Server([str(BIN / "vecsync-embedding-api")], port, log=workdir / "embedding.log", env=env)
    server.start(timeout=120)
    # The first start exports and quantises the model into the cache: allow for it.
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok, timeout=300, what="int8 ready")
    yield server
    server.stop()


def encode_batch(api: Server, texts: list[str]) -> np.ndarray:
    response = requests.post(f"http://127.0.0.1:{api.port}/encode_batch", json={"texts": texts}, timeout=120)
    response.raise_for_status()
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def test_int8_vectors_match_torch(int8_api: Server, model_api: Server) -> None:
    texts = sample_texts(64)
    int8, torch = encode_batch(int8_api, texts), encode_batch(model_api, texts)
    assert int8.shape == torch.shape == (64, 384)
    cosines = (int8 * torch).sum(axis=1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(torch, axis=1))
    assert cosines.min() >= 0.98, cosines.min()
    ready = requests.get(f"http://127.0.0.1:{int8_api.port}/readyz", timeout=5).json()
    assert ready["backend"] == "onnx-int8" and ready["dim"] == 384


def test_every_reply_names_the_vector_space(hash_api: Server, model_api: Server, int8_api: Server) -> None:
    # torch and onnx-int8 run one model, so their vectors share a space and an identity; the hash backend has its own.
    for api, identity in [(hash_api, "hash-384"), (model_api, "all-MiniLM-L6-v2"), (int8_api, "all-MiniLM-L6-v2")]:
        base = f"http://127.0.0.1:{api.port}"
        replies = [
            requests.post(f"{base}/encode", json={"text": "which space?"}, timeout=60).json(),
            requests.post(f"{base}/encode_batch", json={"texts": ["which space?"]}, timeout=60).json(),
            requests.post(f"{base}/v1/embeddings", json={"input": "which space?"}, timeout=60).json(),
        ]
        assert [reply["model"] for reply in replies] == [identity] * 3, base
        assert requests.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"] == identity


async def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


def test_a_thousand_concurrent_requests_are_all_answered(int8_api: Server) -> None:
    texts = sample_texts(200)

    async def flood() -> list[tuple[int, bytes]]:
        bodies = [json.dumps({"text": texts[i % len(texts)] + f" #{i}"}).encode() for i in range(1000)]
        return await asyncio.wait_for(asyncio.gather(*(_post(int8_api.port, "/encode", b) for b in bodies)), 180)

    answers = asyncio.run(flood())
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503}, set(statuses)
    assert statuses.count(200) >= 500
    for status, body in answers:
        if status == 200:
            vector = json.loads(body)["embedding"]
            assert len(vector) == 384 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-3)
    assert requests.get(f"http://127.0.0.1:{int8_api.port}/healthz", timeout=5).ok


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/encode", json.dumps({"text": "x" * 1_000_000}).encode(), 413, "MAX_CHARS_PER_TEXT"),
        ("/encode_batch", json.dumps({"texts": ["x"] * 10_000}).encode(), 413, "MAX_TEXTS_PER_REQUEST"),
        ("/encode_batch", b'{"texts": []}', 422, "at least one text"),
        ("/encode_batch", b"this is not json", 422, "not valid JSON"),
        ("/encode_batch", b'{"texts": ["fine", ""]}', 422, "Text 1 is empty"),
        ("/encode_batch", b'{"texts": ["fine", 7]}', 422, "texts.1"),
        ("/v1/embeddings", b'{"input": {"a": 1}}', 422, "input"),
    ],
)
def test_abuse_gets_a_clear_answer_and_the_service_stays_up(
    int8_api: Server, path: str, body: bytes, status: int, message: str
) -> None:
    answer_status, answer = asyncio.run(_post(int8_api.port, path, body))
    assert answer_status == status
    assert message in answer.decode()
    assert requests.post(f"http://127.0.0.1:{int8_api.port}/encode", json={"text": "still up"}, timeout=30).ok


def test_truncated_texts_are_flagged_and_counted(int8_api: Server) -> None:
    base = f"http://127.0.0.1:{int8_api.port}"
    body = requests.post(f"{base}/encode_batch", json={"texts": ["short", "long text " * 400]}, timeout=60).json()
    assert body["truncated"] == [False, True]
    assert "vecsync_embedding_truncated_texts_total" in requests.get(f"{base}/metrics", timeout=5).text


def test_cuda_path_uses_fp16_and_agrees_with_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (torch.cuda.is_available() is false); runs wherever a GPU is present")
    from embedding_api.backends import TorchEncoder
    from embedding_api.model_folder import default_model_path

    texts = sample_texts(32)
    gpu = TorchEncoder(default_model_path(), "all-MiniLM-L6-v2", "auto", 32)
    assert gpu.device == "cuda"
    assert next(gpu.model.parameters()).dtype == torch.float16
    cpu = TorchEncoder(default_model_path(), "all-MiniLM-L6-v2", "cpu", 32)
    a, b = np.asarray(gpu.encode(texts)), np.asarray(cpu.encode(texts))
    assert ((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min() >= 0.99
