"""The embedder-worker's client of the embedding-api, or of any OpenAI-compatible embeddings server.

One job: turn texts into vectors (and long texts into chunks) over HTTP, and every answer that is not what was asked
into the error the consumer loop acts on (TransientError with the server's Retry-After, ConfigurationError,
PermanentError, TextsRejected).
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import requests

from embedder_worker.settings import OPENAI_DEFAULT_MODEL, EmbedderSettings
from vecsync.chunking import word_spans
from vecsync.errors import ConfigurationError, InvalidEntry, PermanentError, TransientError
from vecsync.messages import unpack_vector
from vecsync.redaction import redact_url

log = logging.getLogger("vecsync.embedder")

# Where the embedding-api cannot chunk (an OpenAI-compatible server has no POST /chunk), texts are split by words,
# this many per token of the chunk size: English prose runs about 1.3 tokens a word, so such chunks fit the window.
WORDS_PER_TOKEN = 0.75
# The chunk size of that split when CHUNK_TOKENS is unset, as no server names its window: all-MiniLM-L6-v2's.
FALLBACK_CHUNK_TOKENS = 256
# The characters one POST /chunk carries at most: a few documents at MAX_DOCUMENT_CHARS, well within the
# embedding-api's MAX_CHUNK_REQUEST_CHARS.
CHUNK_REQUEST_CHARS = 2_000_000

# Statuses that mean "the service is busy or down, try again": never a reason to dead-letter.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# The key was refused: no text is at fault, so nothing is dead-lettered; the worker pauses until it is accepted.
AUTH_STATUSES = {401, 403}
# No such endpoint at EMBEDDING_URL (or not in EMBEDDING_API_STYLE): every text would fail alike, so the worker pauses.
ENDPOINT_STATUSES = {404, 405}
# How OpenAI-compatible servers say that they do not serve the model a request names.
UNKNOWN_MODEL_WORDS = ("not found", "does not exist", "unknown model", "no such model", "not served")
# What probe() embeds: a plain sentence that any model reads.
PROBE_TEXT = "A known-good text, sent to check that the embedding-api serves requests."
# A Retry-After beyond this is taken as this: a misconfigured server must not park the worker for hours.
MAX_RETRY_AFTER_S = 300.0


class TextsRejected(PermanentError):
    """Raised when the embedding-api names texts of a request that its model fails on; the other texts are fine.

    ``reasons`` maps the index of each such text in the request to the model's error on it.
    """

    def __init__(self, message: str, reasons: dict[int, str]) -> None:
        super().__init__(message)
        self.reasons = reasons

    @property
    def indexes(self) -> list[int]:
        return sorted(self.reasons)


class EmbeddingClient:
    """Calls POST /encode_batch (style ``vecsync``) or POST /v1/embeddings (style ``openai``) and checks the answer.

    ``model`` is the identity of the default model (the one that answers requests naming none): what the last such
    reply named, or ``configured_model`` (EMBEDDING_MODEL, else OPENAI_DEFAULT_MODEL: what OpenAI-style requests
    name when the caller names no model) for a server that names none. The model a reply to a request naming one
    names is returned by embed_with_model and leaves ``model`` as it was.

    A caller names a model (``model=``) where a collection records the model it is built with (vecsync.reindex):
    vecsync-style requests then carry it too, and the vectors must be of that collection's size (``dim=``).
    Without one, requests are as before model changes: vecsync-style ones name no model (the embedding-api's
    default answers), and vectors must be of ``dim`` (EMBEDDING_DIM).
    """

    def __init__(
        self,
        base_url: str,
        *,
        dim: int,
        timeout_s: float,
        style: Literal["vecsync", "openai"] = "vecsync",
        configured_model: str = OPENAI_DEFAULT_MODEL,
        api_key: str | None = None,
        request_texts: int = 256,
    ) -> None:
        """``request_texts``: the most texts one request carries (EMBEDDING_REQUEST_TEXTS)."""
        base = base_url.rstrip("/")
        # Accept both "http://host:port" and an OpenAI-style base URL that already ends in /v1.
        openai_base = base if base.endswith("/v1") else base + "/v1"
        self.url = openai_base + "/embeddings" if style == "openai" else base + "/encode_batch"
        self.chunk_url = base + "/chunk"
        # Set once the server answers that it has no POST /chunk: it is not vecsync's embedding-api.
        self.chunks_by_words = style == "openai"
        self.models_url = openai_base + "/models"
        self.style = style
        self.configured_model = configured_model
        self.model: str | None = None
        # The model the last reply on each thread named (embed_with_model): the loops of every sync share a client.
        self._replies = threading.local()
        self.dim = dim
        self.timeout_s = timeout_s
        self.request_texts = request_texts
        self.base_url = base
        # What messages show of the two: without a password the URL may carry.
        self.shown_url, self.shown_endpoint = redact_url(base), redact_url(self.url)
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> EmbeddingClient:
        return cls(
            settings.embedding_url,
            dim=settings.embedding_dim,
            timeout_s=settings.embedding_timeout_s,
            style=settings.embedding_api_style,
            configured_model=settings.embedding_model or OPENAI_DEFAULT_MODEL,
            api_key=settings.embedding_api_key,
            request_texts=settings.embedding_request_texts,
        )

    def check_credentials(self) -> None:
        """Stop at start when the server refuses the API key; say nothing when it cannot be reached yet."""
        try:
            response = self.session.get(self.models_url, timeout=self.timeout_s)
        except requests.RequestException:
            return
        if response.status_code in AUTH_STATUSES:
            raise ConfigurationError(
                f"The embedding-api at {self.shown_url} refused the request ({response.status_code}): "
                "check EMBEDDING_API_KEY."
            )

    def current_model(self) -> str | None:
        """The model the last reply named; else the first of GET /v1/models (one request); None while unknown."""
        if self.model is None:
            self.model = self._listed_model()
        return self.model

    def _listed_model(self) -> str | None:
        try:
            response = self.session.get(self.models_url, timeout=self.timeout_s)
        except requests.RequestException:
            return None
        if response.status_code in RETRY_STATUSES or response.status_code in AUTH_STATUSES:
            return None
        try:
            listed = response.json()["data"] if response.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            listed = None
        if listed == []:
            return None  # vecsync's embedding-api while its model loads
        if isinstance(listed, list) and isinstance(listed[0], dict) and isinstance(listed[0].get("id"), str):
            return str(listed[0]["id"])
        return self.configured_model  # a server that does not list its models

    def probe(self) -> None:
        """Embed one known-good text: passes while the embedding-api serves other inputs, raises as embed() does
        while it does not (down, loading, a model that fails on everything, a misconfiguration).

        The consumer loop calls it after a batch failed transiently, to tell an outage from an input that the
        embedding-api keeps failing on (a 500 or a reset connection on that text alone).
        """
        self.embed([PROBE_TEXT])

    def chunk(
        self, texts: Sequence[str], *, tokens: int | None, overlap: int, model: str | None = None
    ) -> list[list[tuple[int, int]]]:
        """Each text's chunks as character spans: chunks of at most ``tokens`` tokens of the model (its window when
        None), sharing ``overlap`` tokens, split where the text's paragraphs and sentences end; a text that fits is
        one span, the whole text. ``model``: the model whose tokenizer splits them (None: the server's default).

        The embedding-api splits them, as it holds the model's tokenizer. A server without POST /chunk (an
        OpenAI-compatible one) leaves it to a split by words, WORDS_PER_TOKEN per token.
        """
        spans: list[list[tuple[int, int]]] = []
        start = 0
        while start < len(texts):
            # Requests of at least one text, at most request_texts of them and CHUNK_REQUEST_CHARS characters.
            end, size = start + 1, len(texts[start])
            while (
                end < len(texts) and end - start < self.request_texts and size + len(texts[end]) <= CHUNK_REQUEST_CHARS
            ):
                size += len(texts[end])
                end += 1
            spans += self._chunk_request(texts[start:end], tokens, overlap, model)
            start = end
        return spans

    def _chunk_request(
        self, texts: Sequence[str], tokens: int | None, overlap: int, model: str | None
    ) -> list[list[tuple[int, int]]]:
        if not self.chunks_by_words:
            body: dict[str, Any] = {"texts": list(texts), "tokens": tokens, "overlap": overlap}
            if model is not None:
                body["model"] = model
            try:
                response = self.session.post(self.chunk_url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(f"embedding-api unreachable at {redact_url(self.chunk_url)}: {exc}") from exc
            if response.status_code not in ENDPOINT_STATUSES and not _answers_without_spans(response):
                return self._chunk_reply(response, texts, model)
            log.warning(
                "The embedding server at %s has no POST /chunk (it answered %d%s): long documents are split by "
                "words from now on, %.2f words per token of the chunk size, not by its model's tokenizer.",
                self.shown_url,
                response.status_code,
                "" if response.status_code in ENDPOINT_STATUSES else " with no chunks",
                WORDS_PER_TOKEN,
            )
            self.chunks_by_words = True
        words = max(1, int((tokens or FALLBACK_CHUNK_TOKENS) * WORDS_PER_TOKEN))
        return [word_spans(text, words, min(int(overlap * WORDS_PER_TOKEN), words - 1)) for text in texts]

    def _chunk_reply(
        self, response: requests.Response, texts: Sequence[str], model: str | None
    ) -> list[list[tuple[int, int]]]:
        self._raise_if_misconfigured(response, model)
        if response.status_code in RETRY_STATUSES:
            raise TransientError(
                f"embedding-api answered {response.status_code} to POST /chunk: {response.text[:200]}",
                retry_after_s=retry_after_s(response.headers.get("Retry-After")),
            )
        if response.status_code in (413, 422):
            # Every request of these settings fails alike (a chunk size above the model's window, an overlap
            # that does not fit, more texts than it takes at once): the settings' fault, not a document's.
            raise ConfigurationError(
                f"The embedding-api at {self.shown_url} refused to chunk texts ({response.status_code}: "
                f"{response.text[:300]}): check CHUNK_TOKENS and CHUNK_OVERLAP_TOKENS against its model's window, "
                f"and EMBEDDING_REQUEST_TEXTS ({self.request_texts}) against its MAX_TEXTS_PER_REQUEST."
            )
        if response.status_code != 200:
            raise TransientError(f"embedding-api answered {response.status_code} to POST /chunk: {response.text[:200]}")
        try:
            listed = response.json()["spans"]
            spans = [[(int(start), int(end)) for start, end in text_spans] for text_spans in listed]
        except (ValueError, KeyError, TypeError):
            raise TransientError(
                f"embedding-api sent a malformed reply to POST /chunk: {response.text[:200]}"
            ) from None
        if len(spans) != len(texts) or not all(
            text_spans and all(0 <= start <= end <= len(text) for start, end in text_spans)
            for text, text_spans in zip(texts, spans, strict=False)
        ):
            raise TransientError("embedding-api sent chunks that do not fit the texts sent to POST /chunk")
        return spans

    def embed(self, texts: Sequence[str], *, model: str | None = None, dim: int | None = None) -> list[list[float]]:
        """The vectors of ``texts`` by ``model`` (None: the server's default; OpenAI-style requests name
        ``configured_model`` then), each checked to be of ``dim`` values (None: EMBEDDING_DIM)."""
        # Vectors come back as base64 of little-endian float32, the form stage 2 carries: a third of the bytes of
        # JSON numbers, exact, and no float text to format or parse. A server that ignores the request and sends
        # numbers is understood too.
        body: dict[str, Any] = (
            {"input": list(texts), "model": model or self.configured_model, "encoding_format": "base64"}
            if self.style == "openai"
            else {"texts": list(texts), "encoding_format": "base64"}
        )
        if model is not None and self.style == "vecsync":
            body["model"] = model
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"embedding-api unreachable at {redact_url(self.url)}: {exc}") from exc
        self._raise_if_misconfigured(response, model)
        if response.status_code in RETRY_STATUSES:
            raise TransientError(
                f"embedding-api answered {response.status_code}: {response.text[:200]}",
                retry_after_s=retry_after_s(response.headers.get("Retry-After")),
            )
        if response.status_code != 200:
            message = f"embedding-api rejected the texts with {response.status_code}: {response.text[:500]}"
            reasons = _texts_the_model_failed_on(response, len(texts))
            raise TextsRejected(message, reasons) if reasons else PermanentError(message)
        embeddings, named = self._vectors_and_model(response)
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            count = len(embeddings) if isinstance(embeddings, list) else type(embeddings).__name__
            raise TransientError(f"embedding-api returned {count} vectors for {len(texts)} texts")
        size = dim if dim is not None else self.dim
        vectors = [self._checked_vector(item, size) for item in embeddings]
        made_by = named if isinstance(named, str) and named else model or self.configured_model
        if model is None:
            self.model = made_by
        self._replies.model = made_by
        return vectors

    def embed_with_model(
        self, texts: Sequence[str], *, model: str | None = None, dim: int | None = None
    ) -> tuple[list[list[float]], str]:
        """embed()'s vectors, and the model the reply names as their maker (else the one asked for): what their
        payloads record. Returned, not read from ``model`` afterwards, as the loops of every sync share one client.

        A call of embed() that names neither a model nor a size when none is given, as before model changes.
        """
        options: dict[str, Any] = {}
        if model is not None:
            options["model"] = model
        if dim is not None:
            options["dim"] = dim
        self._replies.model = None
        vectors = self.embed(texts, **options)
        return vectors, getattr(self._replies, "model", None) or model or self.model or self.configured_model

    def _raise_if_misconfigured(self, response: requests.Response, model: str | None) -> None:
        """ConfigurationError when the answer says a setting is wrong, not a text: a refused key, no such endpoint, an
        unknown model. The consumer loop then pauses with its entries instead of dead-lettering every one of them.
        ``model``: the model the request named (None: the server's default, or ``configured_model`` in OpenAI style)."""
        status, said = response.status_code, response.text[:300]
        named_model = model or self.configured_model
        if status in AUTH_STATUSES:
            raise ConfigurationError(
                f"The embedding-api at {self.shown_url} refused the API key ({status}: {said}): "
                "check EMBEDDING_API_KEY."
            )
        if status in ENDPOINT_STATUSES:
            raise ConfigurationError(
                f"The embedding-api at {self.shown_url} answered {status} to POST {self.shown_endpoint} ({said}): "
                f"there is no such endpoint there. Check EMBEDDING_URL, and EMBEDDING_API_STYLE ({self.style}); an "
                f"OpenAI-compatible server also answers so for a model it does not serve (the request named "
                f"{named_model}: a collection's recorded model, else EMBEDDING_MODEL)."
            )
        # Only an answer that says the model is unknown: one that merely names it (a text too long for the model)
        # is about a text, and must not pause the stage on it.
        named = named_model in said and any(words in said.lower() for words in UNKNOWN_MODEL_WORDS)
        if self.style == "openai" and status in (400, 422) and ("model_not_found" in said or named):
            raise ConfigurationError(
                f"The embedding-api at {self.shown_url} rejected the request naming model {named_model} "
                f"({status}: {said}): set EMBEDDING_MODEL to a model it serves."
            )

    def _wrong_size_error(self, size: int, expected: int) -> ConfigurationError:
        # One model makes vectors of one size: a reply of another size than EMBEDDING_DIM (or the size a collection
        # records) is the configuration's fault, never a text's, and would fail every text alike.
        if expected != self.dim:
            return ConfigurationError(
                f"The embedding-api at {self.shown_url} returned vectors of {size} dimensions, but the collection "
                f"they are for records vectors of {expected}: check that the embedding-api serves the model the "
                "collection records (`vecsync status` shows it), and EMBEDDING_DIM if a model change is building."
            )
        return ConfigurationError(
            f"The embedding-api at {self.shown_url} returned vectors of {size} dimensions, but EMBEDDING_DIM is "
            f"{self.dim}: set EMBEDDING_DIM to its model's size (the upserters' too, with a collection of that size), "
            f"or point EMBEDDING_URL at an embedding-api whose model makes {self.dim}-dimension vectors."
        )

    def _vectors_and_model(self, response: requests.Response) -> tuple[Any, Any]:
        """The reply's vectors and the model it names."""
        try:
            body = response.json()
            if self.style == "vecsync":
                return body["embeddings"], body.get("model")
            # OpenAI answers carry an index per item; order by it rather than trust the list order.
            items = sorted(body["data"], key=lambda item: item["index"])
            return [item["embedding"] for item in items], body.get("model")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransientError(f"embedding-api sent a malformed reply: {response.text[:200]}") from None

    def _checked_vector(self, item: object, dim: int) -> list[float]:
        """One vector of the reply, from base64 float32 or a list of numbers, checked to be of ``dim`` values."""
        if isinstance(item, str):
            try:
                vector = unpack_vector(item)
            except InvalidEntry as exc:
                raise PermanentError(f"embedding-api returned an unreadable base64 vector: {exc}") from None
            if len(vector) != dim:
                raise self._wrong_size_error(len(vector), dim)
            return vector
        self._check_vector_of_numbers(item, dim)
        return item  # type: ignore[return-value]

    def _check_vector_of_numbers(self, vector: object, dim: int) -> None:
        if not isinstance(vector, list):
            raise PermanentError(f"embedding-api returned a {type(vector).__name__} where a vector was expected")
        if len(vector) != dim:
            raise self._wrong_size_error(len(vector), dim)
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in vector):
            raise PermanentError("embedding-api returned a vector with NaN, infinite or non-numeric values")


def _answers_without_spans(response: requests.Response) -> bool:
    """Whether a 200 to POST /chunk is no answer to it: a server that answers every path alike (with vectors)."""
    if response.status_code != 200:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "spans" not in body


def _texts_the_model_failed_on(response: requests.Response, count: int) -> dict[int, str]:
    """The texts a rejection names as the ones the model fails on (index: error); empty unless every item is valid."""
    try:
        body = response.json()
        failed = body.get("failed", body.get("error", {}).get("failed"))
    except (ValueError, AttributeError):
        return {}
    if not isinstance(failed, list):
        return {}
    reasons: dict[int, str] = {}
    for item in failed:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            return {}
        reasons[index] = str(item.get("error") or "the model failed on this text")
    return reasons


def retry_after_s(header: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
