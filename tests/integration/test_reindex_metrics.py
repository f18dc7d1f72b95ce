"""vecsync.reindex_metrics against real Redis: the samples of model changes, read from the records at each scrape."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry

from vecsync import reindex
from vecsync.reindex import Phase, Serving
from vecsync.reindex_metrics import register_reindex_stats


def test_samples_follow_the_records_at_each_scrape(redis_client: redis.Redis) -> None:
    registry = CollectorRegistry()
    register_reindex_stats(redis_client, ["documents", "kb", "documents"], registry)

    def sample(name: str, collection: str = "documents", **labels: str) -> float | None:
        return registry.get_sample_value(name, {"collection": collection, **labels})

    # Nothing recorded yet: not building, and no change to report.
    assert sample("vecsync_reindex_building") == 0 and sample("vecsync_reindex_building", "kb") == 0
    assert sample("vecsync_reindex_documents_embedded") is None

    served = Serving("documents", "hash-384", 384, "documents")
    reindex.write_serving(redis_client, served)
    change = reindex.start(redis_client, "documents", model="all-MiniLM-L6-v2", dim=384, serving=served)
    reindex.record_fields(redis_client, "documents", {"total:tickets": 70, "total:emails": 30})
    reindex.record_progress(redis_client, "documents", 25)
    progress_at = float(redis_client.hget(reindex.reindex_key("documents"), "progress_at") or 0)

    assert sample("vecsync_reindex_building") == 1 and sample("vecsync_reindex_building", "kb") == 0
    assert sample("vecsync_reindex_documents_embedded") == 25
    assert sample("vecsync_reindex_documents_total") == 100
    assert sample("vecsync_reindex_last_progress_timestamp_seconds") == progress_at
    info = {
        "model": "all-MiniLM-L6-v2",
        "from_model": "hash-384",
        "phase": "building",
        "physical": "documents-v1",
        "from_physical": "documents",
    }
    assert sample("vecsync_reindex_info", **info) == 1
    assert sample("vecsync_reindex_serving_info", physical="documents", model="hash-384") == 1

    reindex.end(redis_client, "documents", change.number, Phase.SWITCHED)
    reindex.write_serving(redis_client, Serving("documents-v1", "all-MiniLM-L6-v2", 384, "documents"))
    assert sample("vecsync_reindex_building") == 0
    assert sample("vecsync_reindex_info", **{**info, "phase": "switched"}) == 1
    assert sample("vecsync_reindex_info", **info) is None
    assert sample("vecsync_reindex_serving_info", physical="documents-v1", model="all-MiniLM-L6-v2") == 1
    assert sample("vecsync_reindex_serving_info", physical="documents", model="hash-384") is None


def test_a_redis_outage_leaves_the_series_out() -> None:
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    registry = CollectorRegistry()
    register_reindex_stats(unreachable, ["documents"], registry)
    assert registry.get_sample_value("vecsync_reindex_building", {"collection": "documents"}) is None
