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
