"""The embedder-worker's client of the embedding-api, or of any OpenAI-compatible embeddings server."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import requests

from embedder_worker.settings import EmbedderSettings
from vecsync.errors import ConfigurationError, InvalidEntry, PermanentError, TransientError
from vecsync.messages import unpack_vector

# Statuses that mean "the service is busy or down, try again": never a reason to dead-letter.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# The key was refused: no text is at fault, so nothing is dead-lettered; the backlog waits for the operator.
AUTH_STATUSES = {401, 403}
# A Retry-After beyond this is taken as this: a misconfigured server must not park the worker for hours.
MAX_RETRY_AFTER_S = 300.0


class EmbeddingClient:
    """Calls POST /encode_batch (style ``vecsync``) or POST /v1/embeddings (style ``openai``) and checks the answer."""

    def __init__(
        self,
        base_url: str,
        *,
        dim: int,
        timeout_s: float,
        style: Literal["vecsync", "openai"] = "vecsync",
        model: str = "all-MiniLM-L6-v2",
        api_key: str | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if style == "openai":
            # Accept both "http://host:port" and an OpenAI-style base URL that already ends in /v1.
            self.url = base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")
        else:
            self.url = base + "/encode_batch"
        self.style = style
        self.model = model
        self.dim = dim
        self.timeout_s = timeout_s
        self.base_url = base
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def check_credentials(self) -> None:
        """Stop at start when the server refuses the API key; say nothing when it cannot be reached yet."""
        try:
            response = self.session.get(self.base_url + "/v1/models", timeout=self.timeout_s)
        except requests.RequestException:
            return
        if response.status_code in AUTH_STATUSES:
            raise ConfigurationError(
                f"The embedding-api at {self.base_url} refused the request ({response.status_code}): "
                "check EMBEDDING_API_KEY."
            )

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> EmbeddingClient:
        return cls(
            settings.embedding_url,
            dim=settings.embedding_dim,
            timeout_s=settings.embedding_timeout_s,
            style=settings.embedding_api_style,
            model=settings.embedding_model,
            api_key=settings.embedding_api_key,
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        # Vectors come back as base64 of little-endian float32, the form stage 2 carries: a third of the bytes of
        # JSON numbers, exact, and no float text to format or parse. A server that ignores the request and sends
        # numbers is understood too.
        body: dict[str, Any] = (
            {"input": list(texts), "model": self.model, "encoding_format": "base64"}
            if self.style == "openai"
            else {"texts": list(texts), "encoding_format": "base64"}
        )
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"embedding-api unreachable at {self.url}: {exc}") from exc
        if response.status_code in AUTH_STATUSES:
            raise TransientError(
                f"embedding-api refused the API key ({response.status_code}); check EMBEDDING_API_KEY. Retrying."
            )
        if response.status_code in RETRY_STATUSES:
            raise TransientError(
                f"embedding-api answered {response.status_code}: {response.text[:200]}",
                retry_after_s=retry_after_s(response.headers.get("Retry-After")),
            )
        if response.status_code != 200:
            raise PermanentError(f"embedding-api rejected the texts with {response.status_code}: {response.text[:500]}")
        embeddings = self._embeddings(response)
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            count = len(embeddings) if isinstance(embeddings, list) else type(embeddings).__name__
            raise TransientError(f"embedding-api returned {count} vectors for {len(texts)} texts")
        return [self._vector(item) for item in embeddings]

    def _embeddings(self, response: requests.Response) -> Any:
        try:
            body = response.json()
            if self.style == "vecsync":
                return body["embeddings"]
            # OpenAI answers carry an index per item; order by it rather than trust the list order.
            items = sorted(body["data"], key=lambda item: item["index"])
            return [item["embedding"] for item in items]
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"embedding-api sent a malformed reply: {response.text[:200]}") from None

    def _vector(self, item: object) -> list[float]:
        """One vector of the reply, from base64 float32 or a list of numbers, checked."""
        if isinstance(item, str):
            try:
                vector = unpack_vector(item)
            except InvalidEntry as exc:
                raise PermanentError(f"embedding-api returned an unreadable base64 vector: {exc}") from None
            if len(vector) != self.dim:
                raise PermanentError(
                    f"embedding-api returned a vector of {len(vector)} dimensions; EMBEDDING_DIM is {self.dim}"
                )
            return vector
        self._check(item)
        return item  # type: ignore[return-value]

    def _check(self, vector: object) -> None:
        if not isinstance(vector, list) or len(vector) != self.dim:
            size = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise PermanentError(f"embedding-api returned a vector of {size} dimensions; EMBEDDING_DIM is {self.dim}")
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in vector):
            raise PermanentError("embedding-api returned a vector with NaN, infinite or non-numeric values")


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
