"""How the embedder-worker classifies the embedding-api's answers: retry, or dead-letter."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator
from typing import Literal

import pytest

from embedder_worker.embedding_client import EmbeddingClient, TextsRejected, retry_after_s
from embedder_worker.settings import EmbedderSettings
from tests.support.fake_api import FakeApi
from tests.support.servers import free_port
from vecsync.backoff import Backoff
from vecsync.errors import ConfigurationError, PermanentError, TransientError
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
    [([[1, float("nan"), 0]], "NaN"), ([[1, "x", 0]], "non-numeric"), (["AAAA", 7], "int where a vector")],
)
def test_wrong_vectors_are_permanent(api: FakeApi, embeddings: list, message: str) -> None:  # type: ignore[type-arg]
    api.body = {"embeddings": embeddings[-1:]}
    with pytest.raises(PermanentError, match=message):
        client(api.url).embed(["a"])


@pytest.mark.parametrize("item", [[1.0, 0.0], pack_vector([1.0, 0.0])], ids=["numbers", "base64"])
def test_a_vector_of_another_size_is_a_misconfiguration_naming_both_sizes(api: FakeApi, item: object) -> None:
    api.body = {"embeddings": [item]}
    with pytest.raises(ConfigurationError, match="vectors of 2 dimensions, but EMBEDDING_DIM is 3"):
        client(api.url).embed(["a"])


@pytest.mark.parametrize(
    ("style", "status", "detail", "named"),
    [
        ("vecsync", 404, "Not Found", "EMBEDDING_URL"),
        ("openai", 405, "Method Not Allowed", "EMBEDDING_API_STYLE"),
        ("openai", 400, "The model 'all-MiniLM-L6-v2' does not exist", "EMBEDDING_MODEL"),
        ("openai", 422, "model_not_found", "EMBEDDING_MODEL"),
    ],
)
def test_a_missing_endpoint_or_unknown_model_is_a_misconfiguration(
    api: FakeApi, style: Literal["vecsync", "openai"], status: int, detail: str, named: str
) -> None:
    api.status, api.body = status, {"detail": detail}
    with pytest.raises(ConfigurationError, match=named):
        EmbeddingClient(api.url, dim=3, timeout_s=5, style=style).embed(["a"])


def test_a_rejection_that_only_names_the_model_is_about_the_text(api: FakeApi) -> None:
    api.status, api.body = 413, {"detail": "input 0 is too long for all-MiniLM-L6-v2"}
    with pytest.raises(PermanentError, match="too long") as raised:
        EmbeddingClient(api.url, dim=3, timeout_s=5, style="openai").embed(["a"])
    assert not isinstance(raised.value, ConfigurationError)


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
    openai = EmbeddingClient(api.url + "/v1", dim=3, timeout_s=5, style="openai", configured_model="m", api_key="k")
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


def test_a_refused_api_key_stops_the_worker_at_start_and_pauses_it_later(api: FakeApi) -> None:
    api.status, api.body = 401, {"detail": "Missing or wrong API key"}
    with pytest.raises(ConfigurationError, match="EMBEDDING_API_KEY"):
        client(api.url).check_credentials()
    with pytest.raises(ConfigurationError, match="EMBEDDING_API_KEY"):
        client(api.url).embed(["a"])


def test_an_unreachable_api_does_not_fail_the_credential_check() -> None:
    client(f"http://127.0.0.1:{free_port()}").check_credentials()


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "The model failed on text 1", "failed": [{"index": 1, "error": "ValueError: unreadable"}]},
        {
            "error": {
                "message": "The model failed on text 1",
                "failed": [{"index": 1, "error": "ValueError: unreadable"}],
            }
        },
    ],
)
def test_texts_the_model_fails_on_are_named_by_a_permanent_error(api: FakeApi, body: dict) -> None:  # type: ignore[type-arg]
    api.status, api.body = 422, body
    with pytest.raises(TextsRejected) as raised:
        client(api.url).embed(["a", "b", "c"])
    assert isinstance(raised.value, PermanentError)
    assert raised.value.indexes == [1] and raised.value.reasons == {1: "ValueError: unreadable"}


@pytest.mark.parametrize(
    "failed", [[{"index": 3, "error": "x"}], [{"index": "1", "error": "x"}], [{"error": "x"}], "text 1", []]
)
def test_a_rejection_naming_no_valid_text_rejects_the_whole_request(api: FakeApi, failed: object) -> None:
    api.status, api.body = 422, {"detail": "The model failed", "failed": failed}
    with pytest.raises(PermanentError) as raised:
        client(api.url).embed(["a", "b", "c"])
    assert not isinstance(raised.value, TextsRejected)


def test_the_model_of_every_reply_is_recorded(api: FakeApi) -> None:
    subject = client(api.url)
    assert subject.model is None
    api.body = {"embeddings": [[1, 0, 0]], "model": "model-a"}
    subject.embed(["a"])
    assert subject.model == "model-a" and subject.current_model() == "model-a"
    api.body = {"embeddings": [[1, 0, 0]], "model": "model-b"}
    subject.embed(["a"])
    assert subject.current_model() == "model-b"
    assert [method for method, _path, _body in api.requests] == ["POST", "POST"], "no probe once a reply named it"


def test_an_openai_server_that_names_no_model_stands_for_the_configured_one(api: FakeApi) -> None:
    subject = EmbeddingClient(api.url, dim=3, timeout_s=5, style="openai", configured_model="text-embedder")
    api.body = {"data": [{"index": 0, "embedding": [1, 0, 0]}]}
    subject.embed(["a"])
    assert subject.model == "text-embedder"


@pytest.mark.parametrize(("base", "path"), [("", "/v1/models"), ("/v1", "/v1/models")])
def test_the_current_model_is_probed_once_when_no_reply_named_it(api: FakeApi, base: str, path: str) -> None:
    api.body = {"object": "list", "data": [{"id": "hash-384", "object": "model"}]}
    subject = EmbeddingClient(api.url + base, dim=3, timeout_s=5)
    assert subject.current_model() == "hash-384"
    assert subject.current_model() == "hash-384"
    assert api.requests == [("GET", path, None)]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, {"detail": "loading"}, None),
        (200, {"object": "list", "data": []}, None),  # the embedding-api while its model loads
        (404, {"detail": "Not Found"}, "configured"),  # a server that does not list its models
        (200, {"object": "list", "data": [{"object": "model"}]}, "configured"),
    ],
)
def test_the_current_model_when_the_probe_says_nothing(
    api: FakeApi,
    status: int,
    body: dict,
    expected: str | None,  # type: ignore[type-arg]
) -> None:
    api.status, api.body = status, body
    subject = EmbeddingClient(api.url, dim=3, timeout_s=5, configured_model="configured")
    assert subject.current_model() == expected


def test_the_current_model_is_unknown_while_the_api_is_unreachable() -> None:
    assert client(f"http://127.0.0.1:{free_port()}").current_model() is None
