"""The embedder-worker's client of the embedding-api."""

from __future__ import annotations

import math
from collections.abc import Sequence

import requests

from vecsync.errors import PermanentError, TransientError

# Statuses that mean "the service is busy or down, try again": never a reason to dead-letter.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class EmbeddingClient:
    """Calls POST /encode_batch and checks what comes back."""

    def __init__(self, base_url: str, *, dim: int, timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/encode_batch"
        self.dim = dim
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            response = self.session.post(self.url, json={"texts": list(texts)}, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"embedding-api unreachable at {self.url}: {exc}") from exc
        if response.status_code in RETRY_STATUSES:
            raise TransientError(f"embedding-api answered {response.status_code}: {response.text[:200]}")
        if response.status_code != 200:
            raise PermanentError(f"embedding-api rejected the texts with {response.status_code}: {response.text[:500]}")
        try:
            embeddings = response.json()["embeddings"]
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"embedding-api sent a malformed reply: {response.text[:200]}") from None
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            raise TransientError(f"embedding-api returned {len(embeddings)} vectors for {len(texts)} texts")
        for vector in embeddings:
            self._check(vector)
        return embeddings

    def _check(self, vector: object) -> None:
        if not isinstance(vector, list) or len(vector) != self.dim:
            size = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise PermanentError(f"embedding-api returned a vector of {size} dimensions; EMBEDDING_DIM is {self.dim}")
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in vector):
            raise PermanentError("embedding-api returned a vector with NaN, infinite or non-numeric values")
