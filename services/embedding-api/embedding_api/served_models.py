"""Which models the embedding-api serves: EMBEDDING_MODELS read into one source per model (its identity, backend
and folder), or, with EMBEDDING_MODELS unset, the one model the older settings name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedding_api.model_folder import default_model_path, folder_identity, model_folder_and_identity
from embedding_api.settings import HASH_MODEL_NAME, PACKAGED_MODEL_NAME, EmbeddingApiSettings


@dataclass(frozen=True)
class ModelSource:
    """One served model, before it is loaded: what requests name it by, and where and how it is loaded from."""

    identity: str  # the name requests give in ``model`` and replies report: the name of its vector space
    backend: str  # hash, torch, onnx or onnx-int8
    folder: Path | None = None  # the sentence-transformers folder; None for the hash encoder
    hash_dim: int = 0  # the hash encoder's dimension; a model reports its own


def served_models(settings: EmbeddingApiSettings) -> list[ModelSource]:
    """The models to serve, the default first (the settings checked that the entries are known and distinct)."""
    if not settings.embedding_models:
        if settings.embedding_backend == "hash":
            return [ModelSource(f"hash-{settings.embedding_dim}", "hash", hash_dim=settings.embedding_dim)]
        folder, identity = model_folder_and_identity(settings)
        return [ModelSource(identity, settings.embedding_backend, folder)]
    # A model is loaded on EMBEDDING_BACKEND; "hash" there cannot load one, so the models of a list run on torch.
    model_backend = "torch" if settings.embedding_backend == "hash" else settings.embedding_backend
    return [_source_of(entry, model_backend) for entry in settings.embedding_models]


def _source_of(entry: str, model_backend: str) -> ModelSource:
    hash_name = HASH_MODEL_NAME.fullmatch(entry)
    if hash_name:
        dim = int(hash_name.group(1))
        return ModelSource(entry, "hash", hash_dim=dim)
    if entry == PACKAGED_MODEL_NAME:
        return ModelSource(PACKAGED_MODEL_NAME, model_backend, Path(default_model_path()))
    folder = Path(entry)  # the settings checked that it is a folder
    return ModelSource(folder_identity(folder), model_backend, folder)
