"""``vecsync-upserter``: apply stage 2 to the Qdrant collection.

``vecsync-upserter migrate-store`` converts an embedded store of an earlier release instead (upserter.migrate).
"""

import logging
import sys
import threading
from typing import Any

import redis
from pymongo.collection import Collection

from upserter.service import Upserter
from upserter.settings import UpserterSettings
from upserter.store_api import store_routes, write_store_key
from vecsync import settings as settings_module
from vecsync.authenticated_routes import AuthenticatedRoutes
from vecsync.backoff import Backoff
from vecsync.batch import Handler
from vecsync.constants import APPLIED_VERSIONS_KEY
from vecsync.errors import TransientError
from vecsync.mongo_reads import open_collection
from vecsync.redaction import redact_url
from vecsync.runtime import run_main, serve_consumer, setup_logging
from vecsync.store import open_vector_store
from vecsync.vectorstore import VectorStore, store_key_file

log = logging.getLogger("vecsync.upserter")


def main() -> None:
    settings = settings_module.load(UpserterSettings)
    setup_logging(settings.log_level)
    store = open_vector_store(
        settings,
        settings.data_dir,
        payload_indexes=settings.payload_fields,
        flush_interval_s=settings.qdrant_flush_interval_ms / 1000,
    )
    # Connected only when first used: a change to embed again that was trimmed from stage 1 is read from MongoDB.
    mongo = open_collection(settings, "vecsync-upserter", connect=False)
    try:
        _serve(settings, store, mongo)
    finally:
        store.close()  # the embedded store writes everything to disk and releases its folder
        mongo.database.client.close()


def _serve(settings: UpserterSettings, store: VectorStore, mongo: Collection[dict[str, Any]]) -> None:
    embedded = settings.embedded_path(settings.data_dir)
    log.info(
        "Upserter %s: %s -> Qdrant collection %r at %s, Redis %s",
        settings.consumer_name,
        settings.stage2_stream,
        settings.qdrant_collection,
        embedded or redact_url(settings.qdrant_url or ""),
        redact_url(settings.redis_url),
    )
    routes = None
    if embedded:
        # The embedded store can only be opened here, so this process answers the CLI's collection operations,
        # to callers that hold its key only.
        key = settings.upserter_api_key
        if key is None:
            key = write_store_key(settings.data_dir)
            log.info(
                "The collection operations on port %d need the key in %s",
                settings.metrics_port,
                store_key_file(settings.data_dir),
            )
        routes = AuthenticatedRoutes(store_routes(store), key)

    def build_handler(client: redis.Redis, stopping: threading.Event) -> Handler | None:
        if not _wait_for_collection(store, settings, stopping):
            return None
        if _exists(client, APPLIED_VERSIONS_KEY):
            log.warning(
                "The Redis hash %s is no longer used: the version fence lives in each point's payload and deletes "
                "in the tombstones (docs/design.md). Delete it to free its memory: DEL %s",
                APPLIED_VERSIONS_KEY,
                APPLIED_VERSIONS_KEY,
            )
        return Upserter(settings, client, store, mongo).handle

    serve_consumer(
        settings,
        stage="upserter",
        stream=settings.stage2_stream,
        group=settings.stage2_group,
        build_handler=build_handler,
        post_routes=routes,
    )


def _exists(client: redis.Redis, key: str) -> bool:
    try:
        return bool(client.exists(key))
    except redis.RedisError:  # only decides whether to log a hint
        return False


def _wait_for_collection(store: VectorStore, settings: UpserterSettings, stopping: threading.Event) -> bool:
    """Check Qdrant and create or check the collection, waiting while it is unreachable; False if asked to stop."""
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
    while not stopping.is_set():
        try:
            store.require_conditional_writes()
            store.ensure_collection()
            return True
        except TransientError as exc:
            log.warning("%s; retrying", exc)
            backoff.wait(stopping)
    return False


def cli() -> None:
    if sys.argv[1:] == ["migrate-store"]:
        from upserter.migrate import main as migrate

        run_main(migrate)
        return
    if sys.argv[1:]:
        print("usage: vecsync-upserter [migrate-store]  (configured through the environment)", file=sys.stderr)
        sys.exit(2)
    run_main(main)
