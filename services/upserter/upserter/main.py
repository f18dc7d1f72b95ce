"""``vecsync-upserter``: apply stage 2 to the Qdrant collection.

``vecsync-upserter migrate-store`` converts an embedded store of an earlier release instead (upserter.migrate).
"""

import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

import redis
from pymongo.collection import Collection

from upserter.model_change import ModelChange
from upserter.named_collections import CollectionSpec, NamedCollections
from upserter.qdrant_rest.app import RestKeys, create_app
from upserter.qdrant_rest.server import RestServer
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
from vecsync.redis_client import connect
from vecsync.reindex_metrics import register_reindex_stats
from vecsync.runtime import Lane, run_main, serve_consumer, setup_logging
from vecsync.search_modes import sparse_vector_missing
from vecsync.store import open_catalog
from vecsync.store.embedded_catalog import EmbeddedCatalog
from vecsync.sync import Sync
from vecsync.syncs import load_syncs, settings_for
from vecsync.vectorstore import VectorStore, store_key_file

log = logging.getLogger("vecsync.upserter")


def main() -> None:
    settings = settings_module.load(UpserterSettings)
    setup_logging(settings.log_level)
    syncs = load_syncs(settings)  # an invalid definition file stops the upserter before it opens anything
    catalog = open_catalog(settings, settings.data_dir, flush_interval_s=settings.qdrant_flush_interval_ms / 1000)
    sparse = {sync.qdrant_collection: sync.sparse_model for sync in syncs}
    names = NamedCollections(
        catalog,
        {name: CollectionSpec(indexes, sparse[name]) for name, indexes in collection_indexes(syncs).items()},
        settings.embedding_dim,
    )
    # Connected only when first used: a change to embed again that was trimmed from stage 1 is read from MongoDB.
    mongo = open_collection(settings, "vecsync-upserter", connect=False)
    rest = None
    try:
        rest = start_rest_api(settings, names)
        _serve(settings, syncs, names, mongo)
    finally:
        if rest is not None:
            rest.close()  # before the store closes: no request reaches a closed store
        names.close()  # the embedded store writes everything to disk and releases its folder
        mongo.database.client.close()


def start_rest_api(settings: UpserterSettings, names: NamedCollections) -> RestServer | None:
    """Serve Qdrant's REST API over the embedded store where QDRANT_REST_PORT asks for it (None: not served)."""
    if settings.qdrant_rest_port is None:
        return None
    catalog = names.catalog
    if not isinstance(catalog, EmbeddedCatalog):  # QDRANT_URL: refused by the settings already
        return None
    keys = RestKeys(read_write=settings.qdrant_api_key, read_only=settings.qdrant_read_only_api_key)
    if not keys.any and not settings.rest_host_is_loopback():
        log.warning(
            "QDRANT_REST_HOST is %s but no QDRANT_API_KEY or QDRANT_READ_ONLY_API_KEY is set: Qdrant's REST API "
            "then serves only clients on this host. Set a key to serve clients elsewhere.",
            settings.qdrant_rest_host,
        )
    app = create_app(catalog, keys, synced=names.writes, writable=settings.qdrant_rest_writable_collections)
    return RestServer(app, settings.qdrant_rest_host, settings.qdrant_rest_port).start()


def collection_indexes(syncs: Sequence[Sync]) -> dict[str, dict[str, str]]:
    """Each Qdrant collection the syncs write, with the payload indexes of every sync that writes it (vecsync.syncs
    refuses a definition file that types one field of a collection two ways)."""
    indexes: dict[str, dict[str, str]] = {}
    for sync in syncs:
        indexes.setdefault(sync.qdrant_collection, {}).update(sync.indexed_payload())
    return indexes


def _serve(
    settings: UpserterSettings,
    syncs: Sequence[Sync],
    names: NamedCollections,
    mongo: Collection[dict[str, Any]],
) -> None:
    embedded = settings.embedded_path(settings.data_dir)
    log.info(
        "Upserter %s: %s -> Qdrant %s at %s, Redis %s",
        settings.consumer_name,
        ", ".join(sync.stage2_stream for sync in syncs),
        "collections " + ", ".join(repr(name) for name in names.names)
        if len(names.names) > 1
        else f"collection {names.names[0]!r}",
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
        routes = AuthenticatedRoutes(store_routes(names), key)

    missing_sparse = MissingSparseVectors()
    started = _ModelChangeThread(settings, syncs, names)

    def lane(sync: Sync) -> Lane:
        sync_settings = settings_for(settings, sync)
        sharing = [other for other in syncs if other.qdrant_collection == sync.qdrant_collection and other != sync]
        # One MongoDB client for every sync: each re-reads its own collection.
        collection = mongo.database.client[sync.mongo_database][sync.mongo_collection]

        def build_handler(client: redis.Redis, stopping: threading.Event) -> Handler | None:
            if not started.wait_for_start(client, stopping):
                return None
            store = names.store(sync.qdrant_collection, names.serving_collection(sync.qdrant_collection))
            if not _wait_for_collection(store, settings, stopping):
                return None
            missing_sparse.warn_once(sync, store)
            if sync is syncs[0]:
                _warn_of_unused_hash(client)
            return Upserter(sync_settings, client, store, collection, sharing=sharing, names=names).handle

        return Lane(sync, sync.stage2_stream, build_handler)

    lanes = [lane(sync) for sync in syncs]
    register_reindex_stats(connect(settings.redis_url, cluster=settings.redis_cluster), names.names)
    try:
        serve_consumer(
            settings,
            stage="upserter",
            group=settings.stage2_group,
            lanes=lanes,
            post_routes=routes,
        )
    finally:
        started.stop()


class _ModelChangeThread:
    """Runs the model-change checks (upserter.model_change) on a thread of their own, once the first lane has
    recorded what each name serves: the other lanes wait for that before they apply anything."""

    def __init__(self, settings: UpserterSettings, syncs: Sequence[Sync], names: NamedCollections) -> None:
        self.settings, self.syncs, self.names = settings, syncs, names
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_for_start(self, client: redis.Redis, stopping: threading.Event) -> bool:
        """Record what each name serves and start the checks (the first caller does), waiting out outages; False
        if asked to stop meanwhile."""
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        while not stopping.is_set():
            with self._lock:
                if self._ready.is_set():
                    return True
                try:
                    change = ModelChange(
                        self.names,
                        self.syncs,
                        client,
                        self.settings.partitions,
                        stage1_group=self.settings.stage1_group,
                        stage2_group=self.settings.stage2_group,
                        holder=self.settings.consumer_name,
                    )
                    change.record_serving()
                except (redis.RedisError, TransientError) as exc:
                    log.warning("Cannot read what the collections serve yet: %s; retrying", exc)
                else:
                    self._thread = threading.Thread(
                        target=change.run, args=(self._stopping,), name="model-change", daemon=True
                    )
                    self._thread.start()
                    self._ready.set()
                    return True
            backoff.wait(stopping)
        return False

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)


class MissingSparseVectors:
    """Warns once per collection where a sync's SPARSE_MODEL asks for sparse vectors that its existing collection
    was made without: the store then writes dense vectors only (writes never fail for it), and the warning says how
    to make the collection again. Said here, at the upserter's start, rather than by the store, which the CLI opens
    too: there `vecsync search` says it in one line of its own."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def warn_once(self, sync: Sync, store: VectorStore) -> None:
        if not sync.sparse_model or store.sparse_vector() == sync.sparse_model:
            return
        with self._lock:
            if store.collection in self._warned:
                return
            self._warned.add(store.collection)
        log.warning(sparse_vector_missing(store.collection, sync.sparse_model))


def _warn_of_unused_hash(client: redis.Redis) -> None:
    if _exists(client, APPLIED_VERSIONS_KEY):
        log.warning(
            "The Redis hash %s is no longer used: the version fence lives in each point's payload and deletes "
            "in the tombstones (docs/design.md). Delete it to free its memory: DEL %s",
            APPLIED_VERSIONS_KEY,
            APPLIED_VERSIONS_KEY,
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
