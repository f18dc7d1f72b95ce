"""``python -m embedding_api.prepare``: build the ONNX cache for EMBEDDING_BACKEND ahead of time (e.g. in an image),
for every model served (EMBEDDING_MODELS)."""

import logging

from embedding_api.onnx_export import ensure_onnx_model
from embedding_api.served_models import served_models
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
    for source in served_models(settings):
        if source.folder is None:
            continue  # a hash encoder has no model to export
        quantized = source.backend == "onnx-int8"
        log.info("Ready: %s", ensure_onnx_model(source.folder, settings.onnx_cache, quantized=quantized))


if __name__ == "__main__":
    run_main(main)
