"""Encoders, what turns texts into unit-length vectors: one per backend, and ``load_model``, which builds a served
model's (``load_encoder``: the default model's)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from embedding_api.onnx_export import ensure_onnx_model
from embedding_api.quiet_loading import load_without_progress_bar
from embedding_api.served_models import ModelSource, served_models
from embedding_api.settings import EmbeddingApiSettings
from embedding_api.worker_layout import cpu_threads_per_worker

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Texts per forward pass when ENCODE_BATCH_SIZE is unset. On a CPU, short passes pad less: measured on 2 cores
# (bench/results/embed.md), torch is fastest at 8 (146 texts/s against 106 at 32) and onnxruntime on both cores at
# 2-4 (onnx-int8 345 at 4 against 181 at 32). An onnx-int8 copy on one thread (see
# worker_layout.CPU_MODEL_WORKERS) is fastest at 1-2: two such copies encode batches of 32 at 374-377 texts/s with
# passes of 1, 351-354 with passes of 4, and merged batches of unrelated texts lose 15-20% at 4. A GPU wants long
# passes.
CPU_FORWARD_BATCH = {"torch": 8, "onnx": 4, "onnx-int8": 4}
SINGLE_THREAD_FORWARD_BATCH = {"onnx-int8": 1}
GPU_FORWARD_BATCH = 128


def forward_batch_size(configured: int | None, backend: str, device: str, threads: int = 0) -> int:
    """ENCODE_BATCH_SIZE, or when unset the measured best for the backend, the device and the threads (0: all)."""
    if configured is not None:
        return configured
    if device == "cuda":
        return GPU_FORWARD_BATCH
    if threads == 1 and backend in SINGLE_THREAD_FORWARD_BATCH:
        return SINGLE_THREAD_FORWARD_BATCH[backend]
    return CPU_FORWARD_BATCH.get(backend, 8)


class Encoder(Protocol):
    name: str
    backend: str
    dim: int
    device: str
    # The model's window in tokens: longer texts are truncated to it.
    max_tokens: int

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens before truncation (capped a little above ``max_tokens``)."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit-length float32 row per text, in order: shape (len(texts), dim)."""
        ...


class HashEncoder:
    """Deterministic pseudo-random unit vectors from each text's SHA-256.

    Equal texts get equal vectors and nothing else is meaningful: this exists
    to load-test the pipeline without paying for a model.
    """

    backend = "hash"
    device = "cpu"

    def __init__(self, dim: int, max_tokens: int = 256) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"  # its own vector space, one per dimension
        self.max_tokens = max_tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        # Words plus the two special tokens a BERT model adds: a stand-in with the same shape.
        return [len(text.split()) + 2 for text in texts]

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(text) for text in texts]) if texts else np.empty((0, self.dim), np.float32)

    def _vector(self, text: str) -> np.ndarray:
        raw = b""
        seed = text.encode("utf-8", "replace")
        counter = 0
        while len(raw) < self.dim * 4:
            raw += hashlib.sha256(counter.to_bytes(4, "little") + seed).digest()
            counter += 1
        # Map 32-bit integers to [-1, 1) and normalise to unit length, like the real model.
        values = np.frombuffer(raw[: self.dim * 4], dtype="<u4") / 2**31 - 1.0
        norm = float(np.linalg.norm(values)) or 1.0
        return (values / norm).astype(np.float32)


class TokenCounter:
    """Counts tokens with the model's own fast tokenizer, without padding."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # Counting stops a little past the window: enough to tell "truncated", and a 100 kB text costs no more.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens + 1)

    def count(self, texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts)]


class TorchEncoder:
    """A sentence-transformers model, loaded offline from a folder."""

    backend = "torch"

    def __init__(self, model_path: str, name: str, device: str, batch_size: int | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.batch_size = forward_batch_size(batch_size, self.backend, device)
        self.model = load_without_progress_bar(lambda: SentenceTransformer(model_path, device=device))
        if device == "cuda":
            self.model.half()  # fp16 on the GPU: twice the throughput, cosine within 1e-3
        # Renamed in sentence-transformers 6; the old name still works there, with a warning.
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 0)
        self.name = name
        self.max_tokens = int(self.model.max_seq_length or 512)
        # A copy of the model's own tokenizer, so counting never changes the state the model encodes with.
        backend_tokenizer = self.model.tokenizer.backend_tokenizer
        self._counter = TokenCounter(Tokenizer.from_str(backend_tokenizer.to_str()), self.max_tokens)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._counter.count(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class OnnxEncoder:
    """The model exported to ONNX (see onnx_export), run by onnxruntime with the model's fast tokenizer."""

    def __init__(
        self,
        onnx_file: Path,
        model_path: Path,
        *,
        name: str,
        backend: str,
        device: str,
        batch_size: int | None,
        threads: int,
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        providers = ["CPUExecutionProvider"]
        available = onnxruntime.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "DEVICE=cuda, but this onnxruntime has no CUDA provider; install onnxruntime-gpu or use DEVICE=cpu"
            )
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available and backend == "onnx":
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=providers)
        self.onnx_file = onnx_file
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.inputs = {item.name for item in self.session.get_inputs()}
        self.backend = backend
        self.name = name
        self.batch_size = forward_batch_size(batch_size, backend, self.device, threads)
        self.max_tokens = max_seq_length(model_path)
        self.tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)
        self._counter = TokenCounter(Tokenizer.from_file(str(model_path / "tokenizer.json")), self.max_tokens)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id
        self.dim = len(self.encode(["dimension probe"])[0])

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._counter.count(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        # Shortest first, in slices: padding each slice only to its own longest text saves most of the work.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        result: np.ndarray | None = None
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.full((len(chunk), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                encoding = encodings[i]
                ids[row, : len(encoding.ids)] = encoding.ids
                mask[row, : len(encoding.ids)] = 1
                types[row, : len(encoding.ids)] = encoding.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            (vectors,) = self.session.run(None, {key: value for key, value in feed.items() if key in self.inputs})
            vectors = vectors.astype(np.float32)
            # The export includes the model's Normalize step; normalising again guards models without it.
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            if result is None:
                result = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            result[chunk] = vectors
        return result if result is not None else np.empty((0, self.dim), np.float32)


def max_seq_length(model_path: Path) -> int:
    """The model's window in tokens, as its sentence_bert_config.json names it (512 when it names none)."""
    config_file = model_path / "sentence_bert_config.json"
    if config_file.exists():
        value: Any = json.loads(config_file.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return 512


def load_encoder(settings: EmbeddingApiSettings) -> Encoder:
    """A copy of the default model the settings name (the first of EMBEDDING_MODELS, or the one model of
    EMBEDDING_BACKEND)."""
    return load_model(served_models(settings)[0], settings)


def load_model(source: ModelSource, settings: EmbeddingApiSettings) -> Encoder:
    """A copy of the served model ``source``, on its backend and the device the settings name, using this worker's
    CPU share."""
    if source.backend == "hash" or source.folder is None:
        log.warning(
            "%s is the hash encoder: its vectors are deterministic but carry no meaning (load tests only)",
            source.identity,
        )
        return HashEncoder(source.hash_dim)
    path, name = source.folder, source.identity
    threads = cpu_threads_per_worker(settings, source.backend)
    encoder: Encoder
    if source.backend == "torch":
        if threads:
            import torch

            torch.set_num_threads(threads)
        encoder = TorchEncoder(str(path), name, settings.device, settings.encode_batch_size)
    else:
        onnx_file = ensure_onnx_model(path, settings.onnx_cache, quantized=source.backend == "onnx-int8")
        encoder = OnnxEncoder(
            onnx_file,
            path,
            name=name,
            backend=source.backend,
            device=settings.device,
            batch_size=settings.encode_batch_size,
            threads=settings.onnx_threads or threads,
        )
    log.info(
        "Loaded model %s with the %s backend on %s (%d dimensions)",
        encoder.name,
        encoder.backend,
        encoder.device,
        encoder.dim,
    )
    return encoder
