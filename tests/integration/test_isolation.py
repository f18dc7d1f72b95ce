"""Entries that fail their batch-mates: one that kills its worker, one that a dependency fails on forever while it
serves every other input. Only the culprit is dead-lettered; an outage still dead-letters nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support import crashing_worker
from tests.support.crashing_worker import CRASH_EXIT, GROUP, OUT, STREAM

ROOT = Path(__file__).resolve().parents[2]


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(STREAM + ":dlq")]


@pytest.mark.parametrize("same_name", [True, False], ids=["restarted", "replaced"])
def test_an_entry_that_kills_its_worker_is_dead_lettered_alone(
    redis_client: redis.Redis, redis_url: str, same_name: bool
) -> None:
    values = [f"good-{n}" for n in range(20)] + ["poison"] + [f"good-{n}" for n in range(20, 63)]
    for value in values:
        redis_client.xadd(STREAM, {"value": value})
    exits = []
    for run in range(3 * crashing_worker.MAX_DELIVERIES):
        name = "worker" if same_name else f"worker-{run}"
        command = [sys.executable, "-m", "tests.support.crashing_worker", redis_url, name]
        exits.append(subprocess.run(command, cwd=ROOT, timeout=60, capture_output=True).returncode)
        if exits[-1] == 0 and int(redis_client.xpending(STREAM, GROUP)["pending"]) == 0:
            break
        assert exits[-1] in (0, CRASH_EXIT), exits
    assert exits.count(CRASH_EXIT) == crashing_worker.MAX_DELIVERIES
    [letter] = dead_letters(redis_client)
    assert json.loads(letter["fields"]) == {"value": "poison"}
    written = sorted(fields["value"] for _id, fields in redis_client.xrange(OUT))
    assert written == sorted(value for value in values if value != "poison"), "each batch-mate reached the next stage"
