"""``vecsync-embedder-worker``: embed stage 1 changes into stage 2."""

import logging

from embedder_worker.embedding_client import EmbeddingClient
from embedder_worker.service import Embedder
from embedder_worker.settings import EmbedderSettings
from vecsync import settings as settings_module
from vecsync.redaction import redact_url
from vecsync.runtime import Lane, run_main, serve_consumer, setup_logging
from vecsync.sync import Sync
from vecsync.syncs import load_syncs, settings_for

log = logging.getLogger("vecsync.embedder_worker")


def main() -> None:
    settings = settings_module.load(EmbedderSettings)
    setup_logging(settings.log_level)
    syncs = load_syncs(settings)  # an invalid definition file stops the worker before it connects anything
    log.info(
        "Embedder-worker %s: %s via %s on %s",
        settings.consumer_name,
        ", ".join(f"{sync.stage1_stream} -> {sync.stage2_stream}" for sync in syncs),
        redact_url(settings.embedding_url),
        redact_url(settings.redis_url),
    )
    embedding = EmbeddingClient.from_settings(settings)
    embedding.check_credentials()

    def lane(sync: Sync) -> Lane:
        sync_settings = settings_for(settings, sync)
        return Lane(
            sync, sync.stage1_stream, lambda client, _stopping: Embedder(sync_settings, embedding, client).handle
        )

    serve_consumer(
        settings,
        stage="embedder",
        group=settings.stage1_group,
        lanes=[lane(sync) for sync in syncs],
        probe=embedding.probe,
        # Its stage 2 entries are the pipeline's biggest: it waits for the upserters when Redis is nearly full.
        pause_when_redis_full=True,
    )


def cli() -> None:
    run_main(main)
