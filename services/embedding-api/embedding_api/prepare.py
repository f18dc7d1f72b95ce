"""``python -m embedding_api.prepare``: build the ONNX cache for EMBEDDING_BACKEND ahead of time (e.g. in an image)."""

import logging

from embedding_api.model_folder import model_folder_and_identity
from embedding_api.onnx_export import ensure_onnx_model
from embedding_api.settings import EmbeddingApiSettings
from vecsync import settings as settings_module
from vecsync.runtime import run_main, setup_logging

log = logging.getLogger("vecsync.embedding_api")


def main() -> None:
    settings = settings_module.load(EmbeddingApiSettings)
    setup_logging(settings.log_level)
    if settings.embedding_backend not in ("onnx", "onnx-int8"):
        log.info("EMBEDDING_BACKEND=%s needs no preparation", settings.embedding_backend)
        return
    path, _identity = model_folder_and_identity(settings)
    onnx_file = ensure_onnx_model(path, settings.onnx_cache, quantized=settings.embedding_backend == "onnx-int8")
    log.info("Ready: %s", onnx_file)


if __name__ == "__main__":
    run_main(main)
