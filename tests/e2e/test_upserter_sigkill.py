"""SIGKILL the upserter mid-batch ten times under load: nothing it acknowledged is missing from the embedded store.

The real `vecsync-upserter` process, real Redis, Qdrant's engine on disk. Each round fills stage 2 with a backlog
of changes (upserts and deletes that often hit the same documents), starts the upserter, lets it acknowledge some
of them, and SIGKILLs it while it holds a batch. Then, with the upserter dead, the test opens the store itself
(the kill released its lock) and checks every acknowledged entry against it: the newest acknowledged change of
each document must be there, or a newer one. The default flush interval applies, so most kills land between two
flushes: what survives is the engine's write-ahead log.
"""

from __future__ import annotations

import bisect
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.servers import free_port, wait_for
from vecsync.constants import STAGE2_GROUP, STAGE2_STREAM
from vecsync.documents import point_id, text_sha256
from vecsync.messages import EmbeddedDocument, parse_version
from vecsync.store.embedded import EmbeddedStore

SOURCE = "app.documents"
ROUNDS = 10
DOCUMENTS = 400
BACKLOG = 2500  # entries added before each round, so the upserter is busy whenever it is killed
BIN = Path(sys.executable).parent


@dataclass
class Change:
    mongo_id: str
    op: str
    version: tuple[int, int]


class Load:
    """Stage 2 entries of a few hundred documents, versions increasing, about one in eight a delete."""

    def __init__(self, client: redis.Redis, seed: int) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.clock = 1_000_000
        self.changes: dict[str, Change] = {}  # by stage 2 entry id
        self.ids: list[tuple[int, int]] = []  # the same ids, parsed, in order

    def add(self, count: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        made = []
        for _ in range(count):
            self.clock += 1
            mongo_id = f"d{self.rng.randrange(DOCUMENTS)}"
            version = f"{self.clock}-{self.rng.randrange(3)}"
            if self.rng.random() < 0.125:
                document = EmbeddedDocument("delete", SOURCE, mongo_id, 1.0, version)
            else:
                text = f"ticket {mongo_id} at {version}"
                payload = {
                    "mongo_id": mongo_id,
                    "source": SOURCE,
                    "text": text,
                    "text_sha256": text_sha256(text),
                    "model": "m1",
                    "version": version,
                }
                vector = [1.0, self.rng.random(), float(self.clock % 97)] + [0.25] * 381
                document = EmbeddedDocument("upsert", SOURCE, mongo_id, 1.0, version, vector, payload)
            pipe.xadd(STAGE2_STREAM, document.to_fields())  # type: ignore[arg-type]
            made.append(Change(mongo_id, document.op, parse_version(version)))
        for entry_id, change in zip(pipe.execute(), made, strict=True):
            self.changes[entry_id] = change
            self.ids.append(parse_version(entry_id))

    def acknowledged_count(self) -> int:
        """How many entries the upserters' group has acknowledged, from its counters alone (cheap to poll)."""
        groups = [g for g in self.client.xinfo_groups(STAGE2_STREAM) if g["name"] == STAGE2_GROUP]
        if not groups:
            return 0  # the upserter creates its group as it first starts
        group = groups[0]
        return bisect.bisect_right(self.ids, parse_version(group["last-delivered-id"])) - int(group["pending"])


def acknowledged(client: redis.Redis, changes: dict[str, Change]) -> tuple[list[str], set[str]]:
    """The stage 2 entries the upserters' group has acknowledged, and those it has delivered (acknowledged or not)."""
    [group] = [g for g in client.xinfo_groups(STAGE2_STREAM) if g["name"] == STAGE2_GROUP]
    last = parse_version(group["last-delivered-id"])
    delivered = {entry_id for entry_id in changes if parse_version(entry_id) <= last}
    pending = {p["message_id"] for p in client.xpending_range(STAGE2_STREAM, STAGE2_GROUP, "-", "+", 1_000_000)}
    return [entry_id for entry_id in changes if entry_id in delivered and entry_id not in pending], delivered


def missing_from_store(folder: Path, changes: dict[str, Change], acked: list[str], delivered: set[str]) -> list[str]:
    """The acknowledged changes whose effect the store does not hold (nor that of a newer delivered change)."""
    newest: dict[str, Change] = {}
    for entry_id in acked:
        change = changes[entry_id]
        if change.mongo_id not in newest or change.version > newest[change.mongo_id].version:
            newest[change.mongo_id] = change
    deletes: dict[str, list[tuple[int, int]]] = {}
    for entry_id in delivered:
        if changes[entry_id].op == "delete":
            deletes.setdefault(changes[entry_id].mongo_id, []).append(changes[entry_id].version)
    store = EmbeddedStore(folder, "documents", 384)  # refused if the dead upserter still held it
    try:
        ids = {point_id(SOURCE, mongo_id): mongo_id for mongo_id in newest}
        held = {ids[pid]: parse_version(p["version"]) for pid, p in store.payloads(list(ids), ["version"]).items()}
    finally:
        store.close()
    missing = []
    for mongo_id, change in newest.items():
        version = held.get(mongo_id)
        if change.op == "upsert":
            # Absent only where a newer delete was delivered (applied, or its tombstone dropped this upsert).
            ok = version >= change.version if version else any(d > change.version for d in deletes.get(mongo_id, []))
        else:
            ok = version is None or version > change.version
        if not ok:
            missing.append(f"{mongo_id}: acknowledged {change.op} {change.version}, the store holds {version}")
    return missing


@pytest.fixture
def upserter_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATA_DIR": str(tmp_path),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "CONSUMER_NAME": "upserter-1",  # a restart takes its own pending entries and locks back at once
        "LOG_LEVEL": "WARNING",
    }
    yield env


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen([str(BIN / "vecsync-upserter")], env=env, stdout=output, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_batch_ten_times_loses_nothing_acknowledged(
    redis_client: redis.Redis, upserter_env: dict[str, str], tmp_path: Path
) -> None:
    load = Load(redis_client, seed=14)
    log = tmp_path / "upserter.log"
    rng = random.Random(41)

    def busy_past(process: subprocess.Popen[bytes], target: int) -> bool:
        """Whether the upserter acknowledged ``target`` entries and holds a batch now."""
        assert process.poll() is None, f"the upserter exited; see {log}"
        if load.acknowledged_count() < target:
            return False
        consumers = redis_client.xinfo_consumers(STAGE2_STREAM, STAGE2_GROUP)
        return any(c["name"] == "upserter-1" and c["pending"] for c in consumers)

    kills: list[tuple[int, int]] = []  # entries acknowledged and entries pending, after each kill mid-batch
    for _attempt in range(3 * ROUNDS):
        if len(kills) == ROUNDS:
            break
        load.add(BACKLOG)
        target = load.acknowledged_count() + rng.randrange(200, 2000)
        process = start(upserter_env, log)
        try:
            wait_for(
                lambda process=process, target=target: busy_past(process, target),
                timeout=120,
                interval=0.005,
                what="the upserter to hold a batch",
            )
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        acked, delivered = acknowledged(redis_client, load.changes)
        missing = missing_from_store(tmp_path / "qdrant", load.changes, acked, delivered)
        assert not missing, f"after kill {len(kills) + 1}: {missing[:10]}"
        held = redis_client.xpending(STAGE2_STREAM, STAGE2_GROUP)["pending"]
        if held:  # else the kill fell between two batches, and does not count
            kills.append((len(acked), held))
    assert len(kills) == ROUNDS, kills

    # Afterwards the upserter drains the rest, and the store holds each document's newest change.
    process = start(upserter_env, log)
    try:
        wait_for(
            lambda: load.acknowledged_count() == len(load.changes),
            timeout=300,
            what="the upserter to drain stage 2",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    everything = list(load.changes)
    assert not missing_from_store(tmp_path / "qdrant", load.changes, everything, set(everything))
