"""``vecsync-producer``: follow a MongoDB collection's changes into stage 1."""

import logging
import threading

from producer.service import Producer
from producer.settings import ProducerSettings
from vecsync import settings as settings_module
from vecsync.backoff import Backoff
from vecsync.metrics import LOOP_HEALTHY, register_stream_stats
from vecsync.mongo_reads import open_collection
from vecsync.partitions import check_count
from vecsync.redaction import redact_url
from vecsync.redis_client import connect
from vecsync.runtime import MetricsServer, run_main, setup_logging, stop_on_signals, wait_for_redis

log = logging.getLogger("vecsync.producer")


def main() -> None:
    settings = settings_module.load(ProducerSettings)
    setup_logging(settings.log_level)
    log.info(
        "Producer for %s, publishing to %s on %s",
        settings.source,
        settings.stage1_stream,
        redact_url(settings.redis_url),
    )
    stopping = threading.Event()
    stop_on_signals(stopping)
    producers: list[Producer] = []

    def healthy() -> bool:
        return bool(producers) and producers[0].liveness.alive()

    LOOP_HEALTHY.labels("producer").set_function(healthy)
    server = MetricsServer(settings.metrics_host, settings.metrics_port, healthy=healthy).start()
    try:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        if not wait_for_redis(client, stopping, Backoff(settings.backoff_initial_s, settings.backoff_max_s)):
            return
        check_count(client, settings.pipeline_streams(), settings.stream_partitions)
        register_stream_stats(client, [(settings.stage1_stream, settings.stage1_group)])
        producers.append(Producer(settings, client, open_collection(settings, "vecsync-producer"), stopping))
        producers[0].run()
    finally:
        server.close()


def cli() -> None:
    run_main(main)
