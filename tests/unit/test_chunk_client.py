"""How the embedder-worker asks the embedding-api to chunk texts, and what it does with every other answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedder_worker import embedding_client
from embedder_worker.embedding_client import EmbeddingClient
from tests.support.fake_api import FakeApi
from vecsync.errors import ConfigurationError, TransientError


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.close()


def client(url: str, style: str = "vecsync") -> EmbeddingClient:
    return EmbeddingClient(url, dim=3, timeout_s=5, style=style)  # type: ignore[arg-type]


def test_the_spans_of_each_text_come_from_the_embedding_api(api: FakeApi) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    spans = client(api.url).chunk(["short one", text], tokens=12, overlap=2)
    assert spans[0] == [(0, 9)]
    assert len(spans[1]) > 1 and spans[1][0][0] == 0 and spans[1][-1][1] == len(text)
    assert api.chunk_requests == [{"texts": ["short one", text], "tokens": 12, "overlap": 2}]


def test_long_requests_are_split_by_characters(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_client, "CHUNK_REQUEST_CHARS", 100)
    texts = ["a " * 30, "b " * 30, "c " * 10, "d", "e " * 60]
    spans = client(api.url).chunk(texts, tokens=None, overlap=0)
    assert [len(request["texts"]) for request in api.chunk_requests] == [1, 3, 1]  # type: ignore[index]
    assert spans == [[(0, len(text))] for text in texts]


def test_requests_carry_at_most_request_texts_texts(api: FakeApi) -> None:
    texts = [f"text {i}" for i in range(7)]
    spans = EmbeddingClient(api.url, dim=3, timeout_s=5, request_texts=3).chunk(texts, tokens=None, overlap=0)
    assert [len(request["texts"]) for request in api.chunk_requests] == [3, 3, 1]  # type: ignore[index]
    assert spans == [[(0, len(text))] for text in texts]


def test_a_server_without_the_route_gets_a_split_by_words(api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    api.chunks, api.status, api.body = False, 404, {"detail": "Not Found"}
    text = " ".join(f"w{i}" for i in range(100))
    chunker = client(api.url)
    spans = chunker.chunk([text], tokens=40, overlap=8)
    # 30 words a chunk (0.75 a token), 6 shared.
    assert [text[start:end].split()[0] for start, end in spans[0]] == ["w0", "w24", "w48", "w72"]
    assert "has no POST /chunk" in caplog.text
    chunker.chunk([text], tokens=40, overlap=8)
    assert len(api.requests) == 1, "the route was asked again after it was found missing"


def test_an_openai_style_server_is_never_asked_to_chunk(api: FakeApi) -> None:
    spans = client(api.url, style="openai").chunk(["one two three"], tokens=None, overlap=0)
    assert spans == [[(0, 13)]] and api.chunk_requests == [] and api.requests == []


def test_settings_the_api_refuses_pause_the_stage(api: FakeApi) -> None:
    api.chunks, api.status, api.body = False, 422, {"detail": "tokens=512 is above this model's window of 256"}
    with pytest.raises(ConfigurationError, match="CHUNK_TOKENS"):
        client(api.url).chunk(["text"], tokens=512, overlap=0)


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, {"detail": "loading"}), (200, {"spans": [[[0, 99]]]}), (200, {"spans": "nonsense"}), (200, {"spans": []})],
)
def test_an_unavailable_api_or_a_reply_that_does_not_fit_is_retried(api: FakeApi, status: int, body: object) -> None:
    api.chunks, api.status, api.body = False, status, body
    with pytest.raises(TransientError):
        client(api.url).chunk(["text"], tokens=None, overlap=0)
