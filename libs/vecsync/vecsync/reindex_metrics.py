"""Prometheus metrics of model changes (vecsync.reindex): read from Redis at each scrape, for the given names.

Like the stream statistics (vecsync.metrics), the figures are read when Prometheus scrapes, so they are current
while a stage is stuck or down, which is when VecsyncReindexStalled looks at them. The label ``collection`` is a
collection name as users query it (QDRANT_COLLECTION, a sync's ``qdrant_collection``), never a physical
collection: that one is a label of the info series only, so the other series keep one identity across changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from vecsync import reindex

log = logging.getLogger(__name__)


class ReindexCollector(Collector):
    """Reads what each name serves and its newest model change from Redis at each scrape."""

    def __init__(self, client: redis.Redis, names: Iterable[str]) -> None:
        self._client = client
        self._names = list(dict.fromkeys(names))

    def collect(self) -> Iterator[Metric]:
        building = GaugeMetricFamily(
            "vecsync_reindex_building",
            "1 while a model change of the collection name builds a new collection beside the served one, else 0.",
            labels=["collection"],
        )
        embedded = GaugeMetricFamily(
            "vecsync_reindex_documents_embedded",
            "Snapshot documents embedded for the collection of the newest model change (0 as it starts).",
            labels=["collection"],
        )
        total = GaugeMetricFamily(
            "vecsync_reindex_documents_total",
            "Documents of the snapshots of the newest model change, as counted when each began.",
            labels=["collection"],
        )
        progress = GaugeMetricFamily(
            "vecsync_reindex_last_progress_timestamp_seconds",
            "Unix time the newest model change last counted a document embedded (its start before the first).",
            labels=["collection"],
        )
        info = GaugeMetricFamily(
            "vecsync_reindex_info",
            "1 for the newest model change of the collection name: its target model, the model it changes from, its "
            "phase (building, switched, aborted, failed) and the physical collections.",
            labels=["collection", "model", "from_model", "phase", "physical", "from_physical"],
        )
        serving = GaugeMetricFamily(
            "vecsync_reindex_serving_info",
            "1 for the physical collection the collection name serves now, with its model.",
            labels=["collection", "physical", "model"],
        )
        try:
            states = [(name, *reindex.read_state(self._client, name)) for name in self._names]
        except redis.RedisError as exc:
            # vecsync_redis_up (vecsync.metrics) tells the outage; the series go absent rather than stale.
            log.warning("Could not read the model change records from Redis: %s", exc)
            return
        for name, served, change in states:
            building.add_metric([name], 1 if change is not None and change.building else 0)
            if served is not None:
                serving.add_metric([name, served.collection, served.model or ""], 1)
            if change is None:
                continue
            embedded.add_metric([name], change.embedded)
            total.add_metric([name], change.total)
            progress.add_metric([name], change.progress_at)
            labels = [name, change.model, change.from_model or "", change.phase.value]
            info.add_metric([*labels, change.collection, change.from_collection], 1)
        yield from (building, embedded, total, progress, info, serving)


def register_reindex_stats(
    client: redis.Redis, names: Iterable[str], registry: CollectorRegistry = REGISTRY
) -> ReindexCollector:
    """Report the model changes of the collection names ``names`` at every scrape of /metrics."""
    collector = ReindexCollector(client, names)
    registry.register(collector)
    return collector
