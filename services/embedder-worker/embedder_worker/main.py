"""``vecsync-embedder-worker``: embed stage 1 changes into stage 2."""

import logging

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.service import Embedder
from embedder_worker.settings import EmbedderSettings
from vecsync import settings as settings_module
from vecsync.redaction import redact_url
from vecsync.runtime import run_main, serve_consumer, setup_logging

log = logging.getLogger("vecsync.embedder_worker")


def main() -> None:
    settings = settings_module.load(EmbedderSettings)
    setup_logging(settings.log_level)
    log.info(
        "Embedder-worker %s: %s -> %s via %s on %s",
        settings.consumer_name,
        settings.stage1_stream,
        settings.stage2_stream,
        redact_url(settings.embedding_url),
        redact_url(settings.redis_url),
    )
    embedding = EmbeddingClient.from_settings(settings)
    embedding.check_credentials()
    serve_consumer(
        settings,
        stage="embedder",
        stream=settings.stage1_stream,
        group=settings.stage1_group,
        build_handler=lambda client, _stopping: Embedder(settings, embedding, client).handle,
        probe=embedding.probe,
        # Its stage 2 entries are the pipeline's biggest: it waits for the upserters when Redis is nearly full.
        pause_when_redis_full=True,
    )


def cli() -> None:
    run_main(main)
