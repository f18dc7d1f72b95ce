"""A first sync into a Redis too small for the collection, the producer killed during its snapshot: `make big-sync`
in small (100,000 documents and 64 MB there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.big_sync import BigSyncConfig, run_big_sync


@pytest.mark.slow
def test_a_collection_larger_than_redis_syncs_with_bounded_memory_through_producer_kills(tmp_path: Path) -> None:
    # About 5 MB of documents and 24 MB of stage 2 entries, into 16 MB.
    result = run_big_sync(BigSyncConfig(documents=5000, maxmemory="16mb", producer_kills=3), tmp_path)
    assert result.producer_kills == 3
    assert result.verify_exit == 0, result.verify_report
    assert result.oom_refusals == 0, "Redis refused a write for memory"
    assert result.peak_used_memory < result.maxmemory
    assert result.entries_per_document <= 1.25, result
