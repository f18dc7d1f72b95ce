"""``vecsync-producer``: follow every sync's MongoDB collection into its stage 1 stream, one thread per sync, and
beside each the thread that publishes the sync's snapshot for a model change of its collection (build_snapshot)."""

import logging
import threading
from collections.abc import Sequence

from producer.build_snapshot import BuildSnapshot
from producer.service import Producer
from producer.settings import ProducerSettings
from vecsync import settings as settings_module
from vecsync.backoff import Backoff
from vecsync.metrics import LOOP_HEALTHY, WatchedStream, register_stream_stats
from vecsync.mongo_reads import open_client
from vecsync.partitions import check_count
from vecsync.redaction import redact_url
from vecsync.redis_client import connect
from vecsync.runtime import Loop, MetricsServer, run_all, run_main, setup_logging, stop_on_signals, wait_for_redis
from vecsync.syncs import load_syncs, settings_for, sync_of

log = logging.getLogger("vecsync.producer")


def main() -> None:
    settings = settings_module.load(ProducerSettings)
    setup_logging(settings.log_level)
    # Before anything connects: an invalid definition file is a configuration error (exit 2), reported whole.
    per_sync = [settings_for(settings, sync) for sync in load_syncs(settings)]
    for sync_settings in per_sync:
        log.info(
            "Producer for %s, publishing to %s on %s",
            sync_settings.source,
            sync_settings.stage1_stream,
            redact_url(settings.redis_url),
        )
    stopping = threading.Event()
    stop_on_signals(stopping)
    producers: list[Producer] = []

    def healthy() -> bool:
        return len(producers) == len(per_sync) and all(producer.liveness.alive() for producer in producers)

    LOOP_HEALTHY.labels("producer").set_function(healthy)
    server = MetricsServer(settings.metrics_host, settings.metrics_port, healthy=healthy).start()
    mongo = None
    try:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        if not wait_for_redis(client, stopping, Backoff(settings.backoff_initial_s, settings.backoff_max_s)):
            return
        check_count(
            client, [stream for each in per_sync for stream in each.pipeline_streams()], settings.stream_partitions
        )
        register_stream_stats(
            client, [WatchedStream(each.stage1_stream, each.stage1_group, sync_of(each).name) for each in per_sync]
        )
        # One client for every sync: one connection pool and one set of server monitors, whatever their number.
        mongo = open_client(settings, "vecsync-producer")
        producers.extend(
            Producer(each, client, mongo[each.mongo_database][each.mongo_collection], stopping) for each in per_sync
        )
        snapshots = [BuildSnapshot(each.settings, client, each.collection, stopping) for each in producers]
        run_producers(producers, stopping, snapshots)
    finally:
        server.close()
        if mongo is not None:
            mongo.close()


def run_producers(
    producers: list[Producer], stopping: threading.Event, snapshots: Sequence[BuildSnapshot] = ()
) -> None:
    """Run each sync's producer, and each of ``snapshots``, on its own thread until stopped; one that raises stops
    the others (runtime.run_all)."""
    loops: list[Loop] = [*producers, *snapshots]
    names = [f"producer-{producer.sync.name}" for producer in producers]
    names += [f"build-snapshot-{snapshot.sync.name}" for snapshot in snapshots]
    run_all(loops, stopping, names)


def cli() -> None:
    run_main(main)
