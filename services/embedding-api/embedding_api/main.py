"""``vecsync-embedding-api``: serve the embedding models (EMBEDDING_MODELS, or the one of EMBEDDING_BACKEND) over
HTTP."""

import logging
import sys

import uvicorn

from embedding_api.app import create_app
from embedding_api.settings import EmbeddingApiSettings
from vecsync import settings as settings_module
from vecsync.runtime import run_main, setup_logging

log = logging.getLogger("vecsync.embedding_api")


def main() -> None:
    settings = settings_module.load(EmbeddingApiSettings)
    setup_logging(settings.log_level)
    failed: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    # The port opens at once, so /healthz answers while the models load and warm up;
    # /readyz turns ready only after every model's warm-up (each model answers requests once its own is done).
    app = create_app(settings, on_load_failure=stop)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    server.run()
    if failed:
        log.error("The model could not be loaded: %s", failed[0])
        sys.exit(1)


def cli() -> None:
    run_main(main)
