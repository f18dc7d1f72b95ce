"""How the embedder-worker classifies the embedding-api's answers: retry, or dead-letter."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator

import pytest

from embedder_worker.embedding_client import EmbeddingClient, retry_after_s
from embedder_worker.settings import EmbedderSettings
from tests.support.fake_api import FakeApi
from tests.support.servers import free_port
from vecsync.consumer import Backoff
from vecsync.errors import PermanentError, TransientError
from vecsync.messages import pack_vector


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.close()


@pytest.fixture
def recording_api(api: FakeApi) -> FakeApi:
    return api


def client(url: str) -> EmbeddingClient:
    return EmbeddingClient(url, dim=3, timeout_s=5)


def test_good_answer(api: FakeApi) -> None:
    api.body = {"embeddings": [[1, 0, 0], [0, 1, 0]]}
    assert client(api.url).embed(["a", "b"]) == [[1, 0, 0], [0, 1, 0]]


def test_base64_vectors_are_asked_for_and_read(api: FakeApi) -> None:
    vectors = [[1.0, 0.0, 0.0], [0.0, 0.5, -0.25]]
    api.body = {"embeddings": [pack_vector(vector) for vector in vectors]}
    assert client(api.url).embed(["a", "b"]) == vectors
    assert api.requests[-1] == ("POST", "/encode_batch", {"texts": ["a", "b"], "encoding_format": "base64"})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (pack_vector([1.0, 0.0]), "2 dimensions; EMBEDDING_DIM is 3"),
        (pack_vector([1.0, float("nan"), 0.0]), "NaN"),
        ("not base64!", "unreadable base64"),
    ],
)
def test_wrong_base64_vectors_are_permanent(api: FakeApi, item: str, message: str) -> None:
    api.body = {"embeddings": [item]}
    with pytest.raises(PermanentError, match=message):
        client(api.url).embed(["a"])


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


def test_retry_after_is_carried_by_the_transient_error(recording_api: FakeApi) -> None:
    api = recording_api
    api.status, api.body, api.headers = 503, {"detail": "queue full"}, {"Retry-After": "7"}
    with pytest.raises(TransientError) as raised:
        client(api.url).embed(["a"])
    assert raised.value.retry_after_s == 7


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("2.5", 2.5), ("-3", 0.0), ("99999", 300.0), ("soon", None)]
)
def test_retry_after_values(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header) == expected


def test_retry_after_as_a_date() -> None:
    seconds = retry_after_s(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert seconds is not None and 25 <= seconds <= 31


def test_backoff_waits_at_least_what_the_server_asked() -> None:
    backoff = Backoff(initial_s=0.001, max_s=0.002)
    started = time.monotonic()
    assert backoff.wait(threading.Event(), at_least_s=0.3)
    assert time.monotonic() - started >= 0.3


def test_openai_style(recording_api: FakeApi) -> None:
    api = recording_api
    api.body = {"data": [{"index": 1, "embedding": [0, 1, 0]}, {"index": 0, "embedding": [1, 0, 0]}]}
    openai = EmbeddingClient(api.url + "/v1", dim=3, timeout_s=5, style="openai", model="m", api_key="k")
    assert openai.url == api.url + "/v1/embeddings"
    assert openai.embed(["a", "b"]) == [[1, 0, 0], [0, 1, 0]]
    assert api.requests[-1] == (
        "POST",
        "/v1/embeddings",
        {"input": ["a", "b"], "model": "m", "encoding_format": "base64"},
    )
    assert api.authorization == "Bearer k"


def test_client_from_settings() -> None:
    settings = EmbedderSettings(embedding_url="http://api:8080/", embedding_api_style="openai", embedding_dim=3)
    made = EmbeddingClient.from_settings(settings)
    assert made.url == "http://api:8080/v1/embeddings" and made.dim == 3 and made.style == "openai"


def test_a_refused_api_key_stops_the_worker_at_start_and_never_dead_letters(api: FakeApi) -> None:
    from vecsync.errors import ConfigurationError

    api.status, api.body = 401, {"detail": "Missing or wrong API key"}
    with pytest.raises(ConfigurationError, match="EMBEDDING_API_KEY"):
        client(api.url).check_credentials()
    with pytest.raises(TransientError, match="EMBEDDING_API_KEY"):
        client(api.url).embed(["a"])


def test_an_unreachable_api_does_not_fail_the_credential_check() -> None:
    client(f"http://127.0.0.1:{free_port()}").check_credentials()
