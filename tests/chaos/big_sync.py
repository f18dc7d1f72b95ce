"""A first sync of a big collection into a small Redis, with the producer killed during the snapshot.

Loads a collection of documents with about 1 KB of text and 4 KB of fields that are neither text nor payload into
the MongoDB stand-in, starts the local stack (the embedded default, every stage at its default settings) with Redis
capped at a small maxmemory under `noeviction`, SIGKILLs the producer several times while it snapshots, and waits
until every stage has drained. It passes when `vecsync verify` finds Qdrant equal to MongoDB, Redis never refused a
command for memory (INFO errorstats), and stage 1 received at most 1.25 entries per document.

    make big-sync                                   # 100,000 documents, Redis at 64 MB, three kills
    make big-sync ARGS="--documents 5000 --backend torch"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

from tests.support.servers import BIN, Server, free_port, wait_for
from tests.support.stack import drained, running_stack, stack_settings
from vecsync.constants import resume_token_key, snapshot_key
from vecsync.redis_client import connect
from vecsync_local.stack import LocalStack, LocalStackSettings, mongo_standin_command

WORDS = "refund invoice printer login outage export webhook router sync scanner latency crash upgrade".split()


@dataclass
class BigSyncConfig:
    documents: int = 100_000
    maxmemory: str = "64mb"
    producer_kills: int = 3
    backend: str = "hash"
    text_chars: int = 1000
    other_chars: int = 4000
    seed: int = 0


@dataclass
class BigSyncResult:
    documents: int
    stage1_entries: int = 0
    oom_refusals: int = 0
    producer_kills: int = 0
    peak_used_memory: int = 0
    maxmemory: int = 0
    verify_exit: int = -1
    verify_report: str = ""
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def entries_per_document(self) -> float:
        return self.stage1_entries / max(self.documents, 1)

    @property
    def passed(self) -> bool:
        return self.verify_exit == 0 and self.oom_refusals == 0 and self.entries_per_document <= 1.25


def load_collection(settings: LocalStackSettings, config: BigSyncConfig) -> None:
    """Fill the collection before the stack starts, served by the stand-in alone, as an existing database is."""
    folder = settings.data_dir.resolve() / "mongo"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = mongo_standin_command(folder / "mongo.sqlite", port)
    args += ["--pid-file", str(folder / "loader.pid"), "--log-file", str(folder / "loader.log")]
    server = Server(args, port, log=folder / "loader-output.log").start()
    rng = random.Random(config.seed)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true"
    )
    try:
        collection = client[settings.mongo_database][settings.mongo_collection]
        chunk = []
        for number in range(config.documents):
            text = " ".join(rng.choice(WORDS) for _ in range(config.text_chars // 7))[: config.text_chars]
            chunk.append(
                {
                    "_id": ObjectId(),
                    "subject": f"ticket {number}",
                    "content": text,
                    "owner": rng.choice(["Ann", "Bo", "Chen"]),
                    # Neither text nor payload: a projection leaves it in MongoDB.
                    "attachment": rng.randbytes(config.other_chars // 2).hex(),
                }
            )
            if len(chunk) == 1000:
                collection.insert_many(chunk)
                chunk = []
        if chunk:
            collection.insert_many(chunk)
    finally:
        client.close()
        server.stop()


class ProducerKiller(threading.Thread):
    """SIGKILLs the producer when its snapshot passes evenly spaced marks."""

    def __init__(self, stack: LocalStack, config: BigSyncConfig) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        step = config.documents / (config.producer_kills + 1)
        self.marks = [int(step * (n + 1)) for n in range(config.producer_kills)]
        self.kills = 0
        self.done = threading.Event()

    def run(self) -> None:
        client = connect(self.stack.settings.redis_url)
        key = snapshot_key(self.stack.settings.source)
        producer = next(child for child in self.stack.stages if child.name == "producer")
        while self.marks and not self.done.wait(0.02):
            published = int(client.hget(key, "published") or 0)
            if published >= self.marks[0] and producer.process is not None and producer.alive():
                print(f"[big-sync] SIGKILL the producer at {published} documents", flush=True)
                producer.process.send_signal(signal.SIGKILL)
                self.kills += 1
                self.marks.pop(0)
        client.close()


def run_big_sync(config: BigSyncConfig, workdir: Path) -> BigSyncResult:
    result = BigSyncResult(config.documents)
    started = time.monotonic()
    settings = stack_settings(workdir / "data", embedding_backend=config.backend, redis_maxmemory=config.maxmemory)
    load_collection(settings, config)
    print(f"[big-sync] loaded {config.documents} documents in {time.monotonic() - started:.0f} s", flush=True)
    with running_stack(settings) as stack:
        client = connect(settings.redis_url)
        killer = ProducerKiller(stack, config)
        killer.start()
        try:
            wait_for(
                lambda: (
                    client.exists(resume_token_key(settings.source))
                    and not client.exists(snapshot_key(settings.source))
                    and drained(settings)
                ),
                timeout=3600,
                interval=1.0,
                what="the snapshot to complete and every stage to drain",
            )
        finally:
            killer.done.set()
        result.producer_kills = killer.kills
        result.stage1_entries = int(client.xinfo_stream(settings.stage1_stream)["entries-added"])
        errors = client.info("errorstats")
        result.oom_refusals = int(errors.get("errorstat_OOM", {}).get("count", 0))
        memory = client.info("memory")
        result.peak_used_memory, result.maxmemory = int(memory["used_memory_peak"]), int(memory["maxmemory"])
        result.verify_exit, result.verify_report = verify(settings)
        client.close()
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def verify(settings: LocalStackSettings) -> tuple[int, str]:
    """`vecsync verify`, as an operator runs it against the running stack."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "MONGO_URI": settings.mongo_uri,
        "EMBEDDING_URL": settings.embedding_url,
        "UPSERTER_URL": settings.upserter_url,
        "DATA_DIR": str(settings.data_dir.resolve()),
    }
    done = subprocess.run([str(BIN / "vecsync"), "verify"], env=env, capture_output=True, text=True, timeout=3600)
    return done.returncode, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BigSyncConfig()
    parser.add_argument("--documents", type=int, default=defaults.documents)
    parser.add_argument("--maxmemory", default=defaults.maxmemory)
    parser.add_argument("--kills", type=int, default=defaults.producer_kills)
    parser.add_argument("--backend", default=defaults.backend)
    parser.add_argument("--workdir", type=Path, default=Path("data/big-sync"))
    args = parser.parse_args(argv)
    config = BigSyncConfig(
        documents=args.documents, maxmemory=args.maxmemory, producer_kills=args.kills, backend=args.backend
    )
    workdir = args.workdir / f"{config.documents}-{config.backend}-{int(time.time())}"
    result = run_big_sync(config, workdir)
    print(json.dumps(asdict(result) | {"entries_per_document": round(result.entries_per_document, 3)}, indent=2))
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"{verdict}: {result.documents} documents, verify exit {result.verify_exit}, {result.oom_refusals} OOM "
        f"refusals, {result.entries_per_document:.3f} stage 1 entries per document, peak {result.peak_used_memory} "
        f"of {result.maxmemory} bytes, {result.producer_kills} producer kills, {result.elapsed_s} s"
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
