"""Benchmark of many syncs in one producer (``make bench-syncs``): a measurement.

Runs `vecsync-producer` as a process against the MongoDB stand-in and a real redis-server, with a VECSYNC_CONFIG of
1 and of BENCH_SYNCS_MANY (20) syncs, each its own collection of BENCH_SYNCS_DOCS (20) small documents, and measures:

S1  the start: seconds from launching the process to every sync's snapshot done (each sync's resume token stored);
S2  the idle cost: CPU seconds per wall second of the idle producer process over BENCH_SYNCS_IDLE_S (20) seconds,
    and of the stand-in and redis-server beside it (each empty change stream read is a round trip the stand-in
    answers, each batch read begins with the flow control's reads of Redis), from /proc/<pid>/stat;

each with the idle poll's backoff (the default, IDLE_POLL_MAX_MS=1000) and without it (IDLE_POLL_MAX_MS=50, equal to
IDLE_POLL_MS: every idle stream read every 50 ms, as before the backoff).

Results go to bench/results/syncs.{json,md}. The machine is noisy and shared: compare ratios within the run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymongo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import BIN, Server, free_port, start_mongo, start_redis  # noqa: E402
from vecsync.redis_client import connect  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MANY = int(os.environ.get("BENCH_SYNCS_MANY", "20"))
DOCS = int(os.environ.get("BENCH_SYNCS_DOCS", "20"))
IDLE_S = float(os.environ.get("BENCH_SYNCS_IDLE_S", "20"))
# After the snapshots, before measuring: the backoff reaches IDLE_POLL_MAX_MS within about three seconds of quiet.
SETTLE_S = 4.0
TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = {"backoff (default)": {}, "no backoff (IDLE_POLL_MAX_MS=50)": {"IDLE_POLL_MAX_MS": "50"}}


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime and stime, fields 14 and 15 of proc(5)


def write_definitions(path: Path, count: int, run: str) -> list[str]:
    names = [f"s{run}_{number}" for number in range(count)]
    lines = ["syncs:"]
    for name in names:
        lines += [f"  - name: {name}", "    mongo_database: bench", f"    mongo_collection: {name}"]
        lines += ["    text_fields: [subject, content]", "    payload_fields: [owner]"]
    path.write_text("\n".join(lines) + "\n")
    return names


def measure(count: int, variant: dict[str, str], run: str, servers: dict[str, Any], workdir: Path) -> dict[str, Any]:
    redis_url, mongo_uri = servers["redis_url"], servers["mongo_uri"]
    mongo_server, redis_server = servers["mongo_server"], servers["redis_server"]
    config = workdir / f"syncs-{run}.yaml"
    names = write_definitions(config, count, run)
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    for name in names:
        mongo["bench"][name].insert_many(
            [{"_id": f"d{n}", "subject": f"ticket {n}", "content": "printer jams", "owner": "Ann"} for n in range(DOCS)]
        )
    mongo.close()
    client = connect(redis_url)
    env = {
        **os.environ,
        "VECSYNC_CONFIG": str(config),
        "MONGO_URI": mongo_uri,
        "REDIS_URL": redis_url,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        **variant,
    }
    with (workdir / f"producer-{run}.log").open("w") as log:
        started = time.monotonic()
        process = subprocess.Popen([str(BIN / "vecsync-producer")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        tokens = [f"vecsync:producer:{name}:resume_token" for name in names]
        while not all(client.exists(token) for token in tokens):
            if process.poll() is not None:
                raise RuntimeError(f"vecsync-producer exited with {process.returncode}; see {log.name}")
            time.sleep(0.02)
        start_s = time.monotonic() - started
        published = sum(client.xlen(f"raw_document_changes.{name}") for name in names)
        time.sleep(SETTLE_S)
        assert mongo_server.process is not None and redis_server.process is not None
        pids = {"producer": process.pid, "mongo_standin": mongo_server.process.pid, "redis": redis_server.process.pid}
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        wall = time.monotonic()
        time.sleep(IDLE_S)
        wall = time.monotonic() - wall
        idle = {role: round((cpu_seconds(pid) - before[role]) / wall, 4) for role, pid in pids.items()}
    finally:
        process.terminate()
        process.wait(30)
        client.close()
    return {
        "syncs": count,
        "start_to_snapshots_done_s": round(start_s, 2),
        "entries_published": published,
        "idle_cpu_per_wall_s": idle,
    }


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vecsync-bench-syncs-"))
    redis_server: Server = start_redis(workdir / "redis")
    mongo_server: Server = start_mongo(workdir / "mongo")
    servers = {
        "redis_url": f"redis://127.0.0.1:{redis_server.port}/0",
        "mongo_uri": f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true",
        "mongo_server": mongo_server,
        "redis_server": redis_server,
    }
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        runs = 0
        for label, variant in VARIANTS.items():
            results[label] = []
            for count in (1, MANY):
                runs += 1
                results[label].append(measure(count, variant, str(runs), servers, workdir))
    finally:
        redis_server.stop()
        mongo_server.stop()
    report(results)


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "documents_per_sync": DOCS,
        "idle_window_s": IDLE_S,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "syncs.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Many syncs benchmark",
        "",
        f"`make bench-syncs`: one `vecsync-producer` process following 1 and {MANY} syncs (each its own collection of "
        f"{DOCS} documents in the MongoDB stand-in), a real redis-server, {summary['machine']}. Idle CPU is CPU "
        f"seconds per wall second over {IDLE_S:g} s, {SETTLE_S:g} s after the last snapshot finished.",
        "",
        "| idle poll | syncs | start to every snapshot done | idle CPU: producer | stand-in | Redis |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in results.items():
        for row in rows:
            idle = row["idle_cpu_per_wall_s"]
            lines.append(
                f"| {label} | {row['syncs']} | {row['start_to_snapshots_done_s']} s | "
                f"{idle['producer'] * 100:.1f}% of a core | {idle['mongo_standin'] * 100:.1f}% of a core | "
                f"{idle['redis'] * 100:.1f}% of a core |"
            )
    (RESULTS / "syncs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
