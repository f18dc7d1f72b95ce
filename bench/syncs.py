"""Benchmark of many syncs in one deployment (``make bench-syncs``): a measurement.

Runs the stages as processes against the MongoDB stand-in, a real redis-server and an embedding-api on the hash
backend, with a VECSYNC_CONFIG of 1 and of BENCH_SYNCS_MANY (20) syncs, each its own collection of BENCH_SYNCS_DOCS
(20) small documents. Idle CPU is CPU seconds per wall second of a process over BENCH_SYNCS_IDLE_S (20) seconds, from
/proc/<pid>/stat, SETTLE_S after the work is done.

The producer alone, with the idle poll's backoff (the default, IDLE_POLL_MAX_MS=1000) and without it
(IDLE_POLL_MAX_MS=50, equal to IDLE_POLL_MS: every idle stream read every 50 ms, as before the backoff):

S1  the start: seconds from launching the process to every sync's snapshot done (each sync's resume token stored);
S2  the idle cost of the producer, and of the stand-in and redis-server beside it (each empty change stream read is
    a round trip the stand-in answers, each batch read begins with the flow control's reads of Redis).

The deployment: one producer, one `vecsync-embedder-worker` and one `vecsync-upserter` on the embedded store (its own
DATA_DIR, no QDRANT_URL: one collection per sync), launched together, as a deployment starts them. The consumers run
one loop per sync on the sync's own streams and do not use IDLE_POLL_MAX_MS, so this runs with the default only:

D1  the start of each process: seconds from its launch to /healthz answering 200, and to every snapshot done;
D2  seconds from the launch to every snapshot drained through both stages (every stream's entries acknowledged);
D3  the idle cost of each process once drained, and of the servers beside them.

Results go to bench/results/syncs.{json,md}. The machine is noisy and shared: compare ratios within the run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymongo
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import (  # noqa: E402
    BIN,
    Server,
    free_port,
    start_embedding_api,
    start_mongo,
    start_redis,
)
from vecsync.redis_client import connect  # noqa: E402
from vecsync.settings import CommonSettings  # noqa: E402
from vecsync.stream_stats import stream_stats  # noqa: E402
from vecsync.syncs import load_syncs, settings_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MANY = int(os.environ.get("BENCH_SYNCS_MANY", "20"))
DOCS = int(os.environ.get("BENCH_SYNCS_DOCS", "20"))
IDLE_S = float(os.environ.get("BENCH_SYNCS_IDLE_S", "20"))
# After the snapshots, before measuring: the backoff reaches IDLE_POLL_MAX_MS within about three seconds of quiet.
SETTLE_S = 4.0
TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = {"backoff (default)": {}, "no backoff (IDLE_POLL_MAX_MS=50)": {"IDLE_POLL_MAX_MS": "50"}}
STAGES = ("producer", "embedder-worker", "upserter")
# Slow enough on a shared machine to tell a hung start from a slow one; far longer than any start measured.
START_TIMEOUT_S = 120.0


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


def load_documents(mongo_uri: str, names: list[str]) -> None:
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    for name in names:
        mongo["bench"][name].insert_many(
            [{"_id": f"d{n}", "subject": f"ticket {n}", "content": "printer jams", "owner": "Ann"} for n in range(DOCS)]
        )
    mongo.close()


def stage_env(config: Path, servers: dict[str, Any], **extra: str) -> dict[str, str]:
    """What a stage process of the benchmark runs with: the definition file, the servers, its own metrics port."""
    return {
        **os.environ,
        "VECSYNC_CONFIG": str(config),
        "MONGO_URI": servers["mongo_uri"],
        "REDIS_URL": servers["redis_url"],
        "EMBEDDING_URL": servers["embedding_url"],
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def launch(stage: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen([str(BIN / f"vecsync-{stage}")], env=env, stdout=out, stderr=subprocess.STDOUT)


def check_running(processes: dict[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    for stage, process in processes.items():
        if process.poll() is not None:
            raise RuntimeError(f"vecsync-{stage} exited with {process.returncode}; see its log in {workdir}")


def wait_until(done: Any, processes: dict[str, subprocess.Popen[bytes]], workdir: Path, what: str) -> None:
    """Poll ``done()`` until true, failing at once when a process of the benchmark exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not done():
        check_running(processes, workdir)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} took more than {START_TIMEOUT_S:g} s; see the logs in {workdir}")
        time.sleep(0.02)


def snapshots_done(client: Any, names: list[str]) -> bool:
    return all(client.exists(f"vecsync:producer:{name}:resume_token") for name in names)


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def drained(client: Any, config: Path, redis_url: str, entries: int) -> bool:
    """Whether both stages of every sync have acknowledged everything, and stage 1 holds at least ``entries``."""
    settings = CommonSettings(redis_url=redis_url, vecsync_config=config)
    each = [settings_for(settings, sync) for sync in load_syncs(settings)]
    stage1 = [group for one in each for group in one.stage1_groups()]
    stages = stage1 + [group for one in each for group in one.stage2_groups()]
    if sum(client.xlen(stream) for stream, _group in stage1) < entries:
        return False
    return all(stream_stats(client, stream, group).drained for stream, group in stages)


def idle_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds per wall second of each process over IDLE_S, SETTLE_S from now."""
    time.sleep(SETTLE_S)
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    wall = time.monotonic()
    time.sleep(IDLE_S)
    wall = time.monotonic() - wall
    return {role: round((cpu_seconds(pid) - before[role]) / wall, 4) for role, pid in pids.items()}


def server_pids(servers: dict[str, Any]) -> dict[str, int]:
    pids = {}
    for role in ("mongo_standin", "redis", "embedding_api"):
        process = servers[role].process
        assert process is not None
        pids[role] = process.pid
    return pids


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        process.terminate()
    for process in processes.values():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(count: int, variant: dict[str, str], run: str, servers: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The producer alone: S1 and S2."""
    config = workdir / f"syncs-{run}.yaml"
    names = write_definitions(config, count, run)
    load_documents(servers["mongo_uri"], names)
    client = connect(servers["redis_url"])
    started = time.monotonic()
    processes = {"producer": launch("producer", stage_env(config, servers, **variant), workdir / f"producer-{run}.log")}
    try:
        wait_until(lambda: snapshots_done(client, names), processes, workdir, "the snapshots")
        start_s = time.monotonic() - started
        published = sum(client.xlen(f"raw_document_changes.{name}") for name in names)
        pids = {"producer": processes["producer"].pid, **server_pids(servers)}
        del pids["embedding_api"]  # not used by the producer
        idle = idle_cpu(pids)
    finally:
        stop(processes)
        client.close()
    return {
        "syncs": count,
        "start_to_snapshots_done_s": round(start_s, 2),
        "entries_published": published,
        "idle_cpu_per_wall_s": idle,
    }


def measure_deployment(count: int, run: str, servers: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The producer, an embedder-worker and an upserter on the embedded store, launched together: D1 to D3."""
    config = workdir / f"syncs-{run}.yaml"
    names = write_definitions(config, count, run)
    load_documents(servers["mongo_uri"], names)
    data_dir = workdir / f"data-{run}"  # the upserter's embedded store, QDRANT_PATH's default DATA_DIR/qdrant
    data_dir.mkdir()
    client = connect(servers["redis_url"])
    envs = {stage: stage_env(config, servers, DATA_DIR=str(data_dir)) for stage in STAGES}
    for env in envs.values():
        env.pop("QDRANT_URL", None)
        env.pop("QDRANT_PATH", None)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    try:
        for stage in STAGES:
            started[stage] = time.monotonic()
            processes[stage] = launch(stage, envs[stage], workdir / f"{stage}-{run}.log")
        start_s: dict[str, float] = {}

        def all_healthy() -> bool:
            for stage in STAGES:
                if stage not in start_s and healthy(int(envs[stage]["METRICS_PORT"])):
                    start_s[stage] = round(time.monotonic() - started[stage], 2)
            return len(start_s) == len(STAGES)

        wait_until(all_healthy, processes, workdir, "/healthz answering 200")
        wait_until(lambda: snapshots_done(client, names), processes, workdir, "the snapshots")
        snapshots_s = time.monotonic() - started[STAGES[0]]
        entries = count * DOCS
        wait_until(lambda: drained(client, config, servers["redis_url"], entries), processes, workdir, "the drain")
        drained_s = time.monotonic() - started[STAGES[0]]
        embedded = sum(client.xlen(f"embedded_documents.{name}") for name in names)
        collections = sorted(path.name for path in (data_dir / "qdrant").iterdir() if path.is_dir())
        pids = {stage.replace("-", "_"): process.pid for stage, process in processes.items()}
        idle = idle_cpu({**pids, **server_pids(servers)})
    finally:
        stop(processes)
        client.close()
    return {
        "syncs": count,
        "start_to_healthz_200_s": {stage.replace("-", "_"): start_s[stage] for stage in STAGES},
        "start_to_snapshots_done_s": round(snapshots_s, 2),
        "start_to_drained_s": round(drained_s, 2),
        "entries_embedded": embedded,
        "embedded_store_folders": len(collections),
        "idle_cpu_per_wall_s": idle,
    }


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="vecsync-bench-syncs-"))
    redis_server: Server = start_redis(workdir / "redis")
    mongo_server: Server = start_mongo(workdir / "mongo")
    embedding_server: Server = start_embedding_api(workdir / "embedding", "hash", LOG_LEVEL="WARNING")
    servers = {
        "redis_url": f"redis://127.0.0.1:{redis_server.port}/0",
        "mongo_uri": f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true",
        "embedding_url": f"http://127.0.0.1:{embedding_server.port}",
        "mongo_standin": mongo_server,
        "redis": redis_server,
        "embedding_api": embedding_server,
    }
    producer_alone: dict[str, list[dict[str, Any]]] = {}
    deployment: list[dict[str, Any]] = []
    try:
        runs = 0
        for label, variant in VARIANTS.items():
            producer_alone[label] = []
            for count in (1, MANY):
                runs += 1
                producer_alone[label].append(measure(count, variant, str(runs), servers, workdir))
        for count in (1, MANY):
            runs += 1
            deployment.append(measure_deployment(count, str(runs), servers, workdir))
    finally:
        embedding_server.stop()
        redis_server.stop()
        mongo_server.stop()
    shutil.rmtree(workdir)  # kept, with every process's log, when a measure fails
    report(producer_alone, deployment)


def percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def report(producer_alone: dict[str, list[dict[str, Any]]], deployment: list[dict[str, Any]]) -> None:
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work (noisy)",
        "date": time.strftime("%Y-%m-%d"),
        "documents_per_sync": DOCS,
        "idle_window_s": IDLE_S,
        "settle_s": SETTLE_S,
        "deployment": deployment,
        "producer_alone": producer_alone,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "syncs.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Many syncs benchmark",
        "",
        f"`make bench-syncs`, {summary['date']}, {summary['machine']}: compare the rows with one another rather "
        f"than the absolute figures. Each sync is its own collection of {DOCS} documents in the MongoDB stand-in, "
        "beside a real redis-server and an embedding-api on the hash backend. Idle CPU is the CPU seconds a process "
        f"used per wall second over {IDLE_S:g} s, from /proc/<pid>/stat, starting {SETTLE_S:g} s after the work was "
        "done; 100% is one core.",
        "",
        "## A deployment: producer, embedder-worker and upserter",
        "",
        "One process of each stage, launched together, the upserter on the embedded store (one collection per "
        "sync in its DATA_DIR). *Start* is the seconds from a process's launch to its /healthz answering 200; "
        "*drained* is the seconds from the launch to every sync's snapshot embedded and upserted (every entry of "
        "both stages' streams acknowledged). Idle poll backoff at its default.",
        "",
        "| syncs | start: producer | embedder-worker | upserter | snapshots done | drained "
        "| idle CPU: producer | embedder-worker | upserter | all three | stand-in | Redis | embedding-api |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in deployment:
        start, idle = row["start_to_healthz_200_s"], row["idle_cpu_per_wall_s"]
        stages = idle["producer"] + idle["embedder_worker"] + idle["upserter"]
        lines.append(
            f"| {row['syncs']} | {start['producer']:.2f} s | {start['embedder_worker']:.2f} s | "
            f"{start['upserter']:.2f} s | {row['start_to_snapshots_done_s']:.2f} s | "
            f"{row['start_to_drained_s']:.2f} s | {percent(idle['producer'])} | {percent(idle['embedder_worker'])} | "
            f"{percent(idle['upserter'])} | **{percent(stages)}** | "
            f"{percent(idle['mongo_standin'])} | {percent(idle['redis'])} | {percent(idle['embedding_api'])} |"
        )
    many = deployment[-1]
    stages_idle = sum(many["idle_cpu_per_wall_s"][stage.replace("-", "_")] for stage in STAGES)
    lines += [
        "",
        f"With {many['syncs']} syncs every process answered /healthz 200 within "
        f"{max(many['start_to_healthz_200_s'].values()):.2f} s of its launch, every snapshot was drained through "
        f"both stages {many['start_to_drained_s']:.2f} s after the launch, and the three stages idled at "
        f"{percent(stages_idle)} of a core together.",
        "",
        "## The producer alone, with and without the idle poll's backoff",
        "",
        "*Start* is the seconds from launching `vecsync-producer` to every sync's snapshot done (each sync's resume "
        "token stored). Without the backoff (IDLE_POLL_MAX_MS=50, equal to IDLE_POLL_MS) every idle change stream "
        "is read every 50 ms, as before the backoff.",
        "",
        "| idle poll | syncs | start to every snapshot done | idle CPU: producer | stand-in | Redis |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in producer_alone.items():
        for row in rows:
            idle = row["idle_cpu_per_wall_s"]
            lines.append(
                f"| {label} | {row['syncs']} | {row['start_to_snapshots_done_s']:.2f} s | "
                f"{percent(idle['producer'])} | {percent(idle['mongo_standin'])} | {percent(idle['redis'])} |"
            )
    (RESULTS / "syncs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
