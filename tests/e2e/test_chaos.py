"""The short chaos run of `make test`; `make chaos` runs the long one (see tests/chaos/harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, run_chaos


@pytest.mark.slow
def test_short_chaos_run_converges(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261129"))
    config = ChaosConfig(
        seed=seed,
        operations=1500,
        documents=300,
        duration_s=30,
        kill_interval_s=3,
        api_outage_s=8,
        qdrant_outage_s=5,
    )
    result = run_chaos(config, tmp_path)
    assert [fault.target for fault in result.schedule if fault.action == "kill"].count("redis") == 1
    assert set(result.id_types) == {"ObjectId", "str", "int", "UUID"}, result.id_types
    assert result.passed, (
        f"seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale, "
        f"{result.dead_lettered} dead-lettered; {result.examples}"
    )


@pytest.mark.slow
def test_short_chaos_run_with_the_server_implementation_against_the_rest_api_converges(tmp_path: Path) -> None:
    """The upserter on vecsync.store.server over HTTP (QDRANT_URL), against the upserter's Qdrant REST API on
    Qdrant's engine embedded (upserter.qdrant_rest): the requests a Qdrant server gets, under the same faults."""
    seed = int(os.environ.get("CHAOS_SEED", "20261129"))
    config = ChaosConfig(
        seed=seed,
        operations=1500,
        documents=300,
        duration_s=30,
        kill_interval_s=3,
        api_outage_s=8,
        qdrant_outage_s=5,
        rest_api=True,
    )
    result = run_chaos(config, tmp_path)
    assert result.passed, (
        f"seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards; {result.examples}"
    )


@pytest.mark.slow
def test_short_chaos_run_on_a_redis_cluster_with_partitions_converges(tmp_path: Path) -> None:
    """REDIS_CLUSTER=true, STREAM_PARTITIONS=8, three embedder-workers, kills of every stage, an unplanned failover (a
    master killed with writes its replica missed, the replica taking over) and a CLUSTER FAILOVER of another
    partition's master while changes flow; `make chaos-cluster` runs the long one."""
    seed = int(os.environ.get("CHAOS_SEED", "20261130"))
    config = ChaosConfig(
        seed=seed,
        operations=1200,
        documents=300,
        duration_s=30,
        kill_interval_s=3,
        api_outage_s=6,
        qdrant_outage_s=4,
        cluster=True,
        partitions=8,
    )
    result = run_chaos(config, tmp_path)
    assert [fault.action for fault in result.schedule].count("failover") == 1
    assert [fault.action for fault in result.schedule].count("takeover") == 1
    assert result.version_samples > 5, "the versions were watched"
    assert result.passed, (
        f"seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards; {result.examples}"
    )


@pytest.mark.slow
def test_short_chaos_run_with_two_syncs_converges(tmp_path: Path) -> None:
    """Two syncs of a definition file: two collections in two databases into two Qdrant collections, ids of four
    types (ObjectIds and strings among them), a filter that updates move documents in and out of, arrays and nested
    fields, inserts, updates, replaces and deletes, every stage killed at least once; `make chaos SYNCS=2` runs the
    long one. Each Qdrant collection ends equal to its MongoDB collection's matching documents, point by point."""
    seed = int(os.environ.get("CHAOS_SEED", "20261207"))
    config = ChaosConfig(
        seed=seed,
        operations=1500,
        documents=200,
        duration_s=30,
        kill_interval_s=3,
        api_outage_s=6,
        qdrant_outage_s=4,
        syncs=2,
    )
    result = run_chaos(config, tmp_path)
    killed = {fault.target for fault in result.schedule if fault.action == "kill"}
    assert {"producer", "embedder-1", "embedder-2", "embedder-3", "upserter-1", "redis"} <= killed, killed
    assert {"ObjectId", "str"} <= set(result.id_types), result.id_types
    assert result.points["tickets"] > 0 and result.points["articles"] > 0, result.points
    assert result.filtered_out["tickets"] > 0, "some tickets end outside the filter"
    assert result.passed, (
        f"seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards; {result.examples}"
    )


@pytest.mark.slow
def test_short_chaos_run_on_long_documents_converges_chunk_by_chunk(tmp_path: Path) -> None:
    """Documents of 1 to 60 chunks (CHUNK_TOKENS=20, overlap 4) that grow, shrink, are replaced, deleted, rewritten
    and edited inside one chunk, ObjectId and string ids among four kinds, while every stage is killed mid-document;
    `make chaos CHUNKS=1` runs the long one. Qdrant ends holding exactly each document's chunks, chunk by chunk:
    none missing, none left behind, none stale."""
    seed = int(os.environ.get("CHAOS_SEED", "20261215"))
    config = ChaosConfig(
        seed=seed,
        operations=1200,
        documents=200,
        duration_s=30,
        kill_interval_s=3,
        api_outage_s=6,
        qdrant_outage_s=4,
        long_documents=True,
    )
    result = run_chaos(config, tmp_path)
    killed = {fault.target for fault in result.schedule if fault.action == "kill"}
    assert {"producer", "embedder-1", "embedder-2", "embedder-3", "upserter-1", "redis"} <= killed, killed
    assert {"ObjectId", "str"} <= set(result.id_types), result.id_types
    assert result.most_chunks["default"] == 60 and result.documents_chunked["default"] > 50, result.most_chunks
    kinds = {"insert", "delete", "replace", "grow", "shrink", "edit inside one chunk", "new owner", "rewrite"}
    assert kinds <= set(result.changes), result.changes
    assert result.passed, (
        f"seed {seed}: {result.missing} missing, {result.extra} extra, {result.stale} stale chunks, "
        f"{result.dead_lettered} dead-lettered, {result.versions_backwards} versions backwards; {result.examples}"
    )
