"""``vecsync-upserter``: apply stage 2 to the Qdrant collection."""

import logging
import threading

from upserter.read_api import store_routes
from upserter.service import Upserter
from upserter.settings import UpserterSettings
from vecsync import settings as settings_module
from vecsync.consumer import Backoff
from vecsync.errors import TransientError
from vecsync.runtime import run_main, serve_consumer, setup_logging
from vecsync.streams import redact_url
from vecsync.vectorstore import VectorStore

log = logging.getLogger("vecsync.upserter")


def main() -> None:
    settings = settings_module.load(UpserterSettings)
    setup_logging(settings.log_level)
    store = VectorStore.open(settings, settings.data_dir)
    embedded = settings.embedded_path(settings.data_dir)
    log.info(
        "Upserter %s: %s -> Qdrant collection %r at %s, Redis %s",
        settings.consumer_name,
        settings.stage2_stream,
        settings.qdrant_collection,
        embedded or settings.qdrant_url,
        redact_url(settings.redis_url),
    )
    serve_consumer(
        settings,
        stage="upserter",
        stream=settings.stage2_stream,
        group=settings.stage2_group,
        build_handler=lambda client, stopping: (
            Upserter(settings, client, store).handle if _wait_for_collection(store, settings, stopping) else None
        ),
        # The embedded store can only be opened here, so this process answers the CLI's reads.
        post_routes=store_routes(store) if embedded else None,
    )
    store.close()


def _wait_for_collection(store: VectorStore, settings: UpserterSettings, stopping: threading.Event) -> bool:
    """Create or check the collection, waiting while Qdrant is unreachable; False if asked to stop first."""
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
    while not stopping.is_set():
        try:
            store.ensure_collection()
            return True
        except TransientError as exc:
            log.warning("%s; retrying", exc)
            backoff.wait(stopping)
    return False


def cli() -> None:
    run_main(main)
