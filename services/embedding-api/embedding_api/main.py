"""``vecsync-embedding-api``: serve the embedding model over HTTP."""

import logging

import uvicorn

from embedding_api.app import create_app
from embedding_api.backends import load_encoder
from embedding_api.settings import EmbeddingApiSettings
from vecsync import settings as settings_module
from vecsync.runtime import run_main, setup_logging

log = logging.getLogger("vecsync.embedding_api")


def main() -> None:
    settings = settings_module.load(EmbeddingApiSettings)
    setup_logging(settings.log_level)
    # The model loads (and warms up) before the port opens, so a client that connects gets answers.
    encoder = load_encoder(settings)
    encoder.encode(["warm-up"])
    app = create_app(settings, encoder)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), access_log=False)


def cli() -> None:
    run_main(main)
