"""The soak test (``make soak``): does anything the pipeline keeps grow for ever under a steady load?

Runs the local stack with the hash backend (real Redis, the MongoDB stand-in, the embedding-api, the producer, two
embedder-workers, the upserter with Qdrant's engine embedded) and first measures the pipeline's rate: documents per
second from inserting SOAK_SEED_DOCS (3000) until they are all searchable, as B3 of bench/pipeline.py does. Then for
SOAK_SECONDS (1200) it inserts, updates (half of them changing the text, half only a payload field) and deletes
documents in equal shares at half that rate (SOAK_RATE, operations per second, sets it instead), so the collection
keeps its size, and every SOAK_SAMPLE_SECONDS (10) it samples Redis's memory (INFO used_memory), the resident memory
(RSS) of every process, the tombstones, the skip-unchanged hint and the streams' lengths. At the end it waits for the
pipeline to drain and checks that Qdrant holds one point per document.

What must hold: after the first SOAK_WARMUP_SECONDS (300), Redis's memory and every process's RSS stay flat: each
series' mean over the last five minutes must lie within 10% of its mean over the first five after the warm-up
(windows of half the measured time in a shorter run). Five minutes average out the streams' sawtooth between two
trims, which alone moves Redis's memory by about a tenth; one-minute medians and a fitted line are reported too. The
streams keep their newest SOAK_RETENTION_COUNT (20000) entries (STREAM_RETENTION_COUNT), so that they
reach their steady length well inside the warm-up even at a low rate.

Results go to SOAK_RESULTS (bench/results): soak.json (every sample), soak.md (the figures), soak.png (the plot).
Exits 1 when a series is not flat or Qdrant does not match MongoDB. `python bench/soak.py --report FILE` writes
the figures, table and plot again from an earlier run's soak.json. A short run checks the harness:
SOAK_SECONDS=120 SOAK_WARMUP_SECONDS=40 SOAK_RESULTS=/tmp/soak make soak.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import documents, insert_and_time, rss_mb, searchable, stack  # noqa: E402

from tests.support.servers import wait_for  # noqa: E402
from tests.support.stack import drained  # noqa: E402
from vecsync.constants import APPLIED_TEXT_KEY, APPLIED_TEXT_PREVIOUS_KEY, tombstones_key  # noqa: E402
from vecsync_local.stack import LocalStack  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "1200"))
WARMUP_SECONDS = float(os.environ.get("SOAK_WARMUP_SECONDS", "300"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "10"))
SEED_DOCS = int(os.environ.get("SOAK_SEED_DOCS", "3000"))
RETENTION_COUNT = int(os.environ.get("SOAK_RETENTION_COUNT", "20000"))
RATE = float(os.environ["SOAK_RATE"]) if os.environ.get("SOAK_RATE") else None
RESULTS = Path(os.environ.get("SOAK_RESULTS", str(ROOT / "bench" / "results")))
TOLERANCE = 0.10
TICK_S = 0.1  # the load is issued in small bunches this often, so that it is steady at any rate


class Load:
    """Inserts, updates and deletes in equal shares at ``rate`` operations per second, until stopped."""

    def __init__(self, collection: Any, live: list[str], rate: float) -> None:
        self.collection = collection
        self.samples = documents(100, seed=3)
        self.live = live  # the ids of the documents that exist
        self.rate = rate
        self.rng = random.Random(11)
        self.done = {"insert": 0, "update": 0, "delete": 0}
        self.stopping = threading.Event()
        self.next_id = len(live)
        self.behind_s = 0.0  # how far the load fell behind its schedule at most

    def run(self) -> None:
        started, owed = time.monotonic(), 0.0
        ticks = 0
        while not self.stopping.is_set():
            ticks += 1
            owed += self.rate * TICK_S
            count, owed = int(owed), owed - int(owed)
            self._bunch(count)
            lag = time.monotonic() - (started + ticks * TICK_S)
            self.behind_s = max(self.behind_s, lag)
            if lag < 0:
                self.stopping.wait(-lag)

    def _bunch(self, count: int) -> None:
        kinds = [("insert", "update", "delete")[self.rng.randrange(3)] for _ in range(count)]
        inserts = [self._new() for kind in kinds if kind == "insert"]
        if inserts:
            self.collection.insert_many(inserts, ordered=False)
            self.live.extend(doc["_id"] for doc in inserts)
        updates = [kind for kind in kinds if kind == "update"]
        for _ in updates:
            mongo_id = self.rng.choice(self.live)
            if self.rng.random() < 0.5:
                change = {"content": f"Edited at {time.time():.6f}: {self.rng.randrange(10**9)}."}
            else:
                change = {"owner": f"Owner {self.rng.randrange(1000)}"}  # text unchanged: payload-only
            self.collection.update_one({"_id": mongo_id}, {"$set": change})
        deletes = []
        for _ in range(sum(kind == "delete" for kind in kinds)):
            if len(self.live) > 1:
                index = self.rng.randrange(len(self.live))
                self.live[index], self.live[-1] = self.live[-1], self.live[index]
                deletes.append(self.live.pop())
        if deletes:
            self.collection.delete_many({"_id": {"$in": deletes}})
        self.done["insert"] += len(inserts)
        self.done["update"] += len(updates)
        self.done["delete"] += len(deletes)

    def _new(self) -> dict[str, Any]:
        doc = dict(self.rng.choice(self.samples))
        doc["_id"] = f"soak-{self.next_id}"
        doc["content"] = f"{doc['content']} Soak {self.next_id}."
        self.next_id += 1
        return doc


def redis_keys_size(client: redis.Redis, pattern: str) -> int:
    """The entries of the hashes whose names match ``pattern`` (each partition's, and a hint's two generations)."""
    return sum(int(client.hlen(key)) for key in client.scan_iter(match=pattern))


def sample(running: LocalStack, client: redis.Redis, started: float) -> dict[str, Any]:
    settings = running.settings
    hints = redis_keys_size(client, APPLIED_TEXT_KEY) + redis_keys_size(client, APPLIED_TEXT_PREVIOUS_KEY)
    return {
        "t_s": round(time.monotonic() - started, 1),
        "redis_used_memory_mb": round(int(client.info("memory")["used_memory"]) / 2**20, 2),
        "rss_mb": {name: round(mb, 1) for name, mb in rss_mb(running).items()},
        "tombstones": redis_keys_size(client, tombstones_key("*")),
        "hints": hints,
        "stage1_length": int(client.xlen(settings.stage1_stream)),
        "stage2_length": int(client.xlen(settings.stage2_stream)),
    }


def series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each memory series: Redis's used memory and each process's RSS, as (seconds, MB)."""
    result: dict[str, list[tuple[float, float]]] = {"Redis used_memory": []}
    for row in samples:
        result["Redis used_memory"].append((row["t_s"], row["redis_used_memory_mb"]))
        for name, mb in row["rss_mb"].items():
            result.setdefault(f"RSS {name}", []).append((row["t_s"], mb))
    return result


def flatness(points: list[tuple[float, float]], seconds: float, warmup_s: float) -> dict[str, Any]:
    """How a series moved after the warm-up: the mean of its first window against the mean of its last.

    A window is five minutes (half the measured time in a shorter run), long enough to average out the sawtooth of
    the streams, which grow by up to a tenth of their retained length between two trims. Also reported: the lowest
    and highest one-minute median, and the growth a straight line fitted to the samples makes over the measured time.
    """
    after = [(t, value) for t, value in points if t >= warmup_s]
    window = min(300.0, (seconds - warmup_s) / 2)
    first = [value for t, value in after if t < warmup_s + window]
    last = [value for t, value in after if t >= seconds - window]
    if not first or not last or len(after) < 2:
        return {"first_window": None, "last_window": None, "change": None, "flat": False}
    minutes: dict[int, list[float]] = {}
    for t, value in after:
        minutes.setdefault(int((t - warmup_s) // 60), []).append(value)
    medians = [statistics.median(values) for values in minutes.values()]
    reference, final = statistics.mean(first), statistics.mean(last)
    slope = statistics.linear_regression([t for t, _ in after], [value for _, value in after]).slope
    change = (final - reference) / reference if reference else 0.0
    return {
        "window_s": window,
        "first_window": round(reference, 2),
        "last_window": round(final, 2),
        "change": round(change, 4),
        "minute_median_low": round(min(medians), 2),
        "minute_median_high": round(max(medians), 2),
        "fitted_growth": round(slope * (seconds - warmup_s) / reference, 4) if reference else 0.0,
        "flat": abs(change) <= TOLERANCE,
    }


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """Each memory series' flatness, from the samples of ``results``."""
    sizes = results["sizes"]
    return {
        name: flatness(points, sizes["seconds"], sizes["warmup_seconds"])
        for name, points in series(results["samples"]).items()
    }


def run() -> dict[str, Any]:
    env = {"STREAM_RETENTION_COUNT": str(RETENTION_COUNT)}
    with stack("soak", "hash", **env) as (running, collection):
        client = redis.Redis.from_url(running.settings.redis_url, decode_responses=True)
        seed = documents(SEED_DOCS)
        pipeline_rate = insert_and_time(running, collection, seed)
        rate = RATE or pipeline_rate / 2
        print(f"pipeline rate {pipeline_rate:.0f} docs/s; soaking at {rate:.0f} operations/s for {SECONDS:.0f} s")
        load = Load(collection, [doc["_id"] for doc in seed], rate)
        loader = threading.Thread(target=load.run, daemon=True)
        started = time.monotonic()
        loader.start()
        samples = []
        try:
            while time.monotonic() - started < SECONDS:
                samples.append(sample(running, client, started))
                row = samples[-1]
                print(
                    f"{row['t_s']:7.0f} s  redis {row['redis_used_memory_mb']:7.1f} MB  tombstones "
                    f"{row['tombstones']:6d}  hints {row['hints']:6d}  stage 1 {row['stage1_length']:6d}  "
                    f"stage 2 {row['stage2_length']:6d}",
                    flush=True,
                )
                time.sleep(max(0.0, started + len(samples) * SAMPLE_SECONDS - time.monotonic()))
        finally:
            load.stopping.set()
            loader.join(60)
        elapsed = time.monotonic() - started
        wait_for(lambda: drained(running.settings), timeout=600, interval=0.5, what="the pipeline to drain")
        documents_left = collection.count_documents({})
        points = searchable(running)
        client.close()
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "sizes": {
            "seconds": SECONDS,
            "warmup_seconds": WARMUP_SECONDS,
            "sample_seconds": SAMPLE_SECONDS,
            "seed_docs": SEED_DOCS,
            "stream_retention_count": RETENTION_COUNT,
        },
        "pipeline_docs_per_s": round(pipeline_rate, 1),
        "target_ops_per_s": round(rate, 1),
        "achieved_ops_per_s": round(sum(load.done.values()) / elapsed, 1),
        "operations": load.done,
        "load_behind_s_max": round(load.behind_s, 2),
        "documents_at_end": documents_left,
        "points_at_end": points,
        "matches": documents_left == points,
        "samples": samples,
    }
    return with_figures(results)


def with_figures(results: dict[str, Any]) -> dict[str, Any]:
    flat = figures(results)
    return {**results, "flatness": flat, "flat": all(figure["flat"] for figure in flat.values())}


def markdown(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    minutes = f"{min(300.0, (sizes['seconds'] - sizes['warmup_seconds']) / 2) / 60:.3g}"
    lines = [
        "# Soak test results",
        "",
        f"{results['machine']}; {sizes['seconds']:.0f} s of load, the first {sizes['warmup_seconds']:.0f} s of it a "
        f"warm-up, sampled every {sizes['sample_seconds']:.0f} s; STREAM_RETENTION_COUNT "
        f"{sizes['stream_retention_count']}. Produced by `make soak` (bench/soak.py).",
        "",
        f"Pipeline rate (hash backend, {sizes['seed_docs']} documents inserted until searchable): "
        f"{results['pipeline_docs_per_s']} docs/s. Load: {results['target_ops_per_s']} operations/s asked, "
        f"{results['achieved_ops_per_s']} achieved ({results['operations']['insert']} inserts, "
        f"{results['operations']['update']} updates, {results['operations']['delete']} deletes; at most "
        f"{results['load_behind_s_max']} s behind schedule).",
        "",
        f"At the end, drained: {results['documents_at_end']} documents in MongoDB, {results['points_at_end']} points "
        f"in Qdrant ({'match' if results['matches'] else 'MISMATCH'}).",
        "",
        f"Each series after the warm-up: the mean of its first {minutes} minutes against the mean of its last",
        f"{minutes} (flat: within 10%), the lowest and highest one-minute median, and the growth a straight line",
        "fitted to the samples makes over the measured time:",
        "",
        f"| series | first {minutes} min | last {minutes} min | change | minute medians | fitted growth | flat |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figure in results["flatness"].items():
        if figure["change"] is None:
            lines.append(f"| {name} | - | - | - | - | - | NO |")
            continue
        lines.append(
            f"| {name} | {figure['first_window']} MB | {figure['last_window']} MB | {figure['change'] * 100:+.1f}% | "
            f"{figure['minute_median_low']}-{figure['minute_median_high']} MB | "
            f"{figure['fitted_growth'] * 100:+.1f}% | {'yes' if figure['flat'] else 'NO'} |"
        )
    samples = results["samples"]
    if samples:
        after = [row for row in samples if row["t_s"] >= sizes["warmup_seconds"]] or samples
        lines += [
            "",
            "| Redis contents | at the end of the warm-up | at the end |",
            "|---|---|---|",
            f"| tombstones | {after[0]['tombstones']} | {samples[-1]['tombstones']} |",
            f"| skip-unchanged hint entries | {after[0]['hints']} | {samples[-1]['hints']} |",
            f"| stage 1 entries | {after[0]['stage1_length']} | {samples[-1]['stage1_length']} |",
            f"| stage 2 entries | {after[0]['stage2_length']} | {samples[-1]['stage2_length']} |",
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, contents) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for name, points in series(results["samples"]).items():
        memory.plot([t / 60 for t, _ in points], [value for _, value in points], label=name)
    memory.set_ylabel("MB")
    memory.set_yscale("log")
    memory.set_title(
        f"vecsync soak: {results['achieved_ops_per_s']} operations/s (half the hash pipeline's "
        f"{results['pipeline_docs_per_s']} docs/s)"
    )
    memory.legend(fontsize=8, loc="upper left", ncol=2)
    times = [row["t_s"] / 60 for row in results["samples"]]
    for key, label in (
        ("tombstones", "tombstones"),
        ("hints", "skip-unchanged hint entries"),
        ("stage1_length", "stage 1 entries"),
        ("stage2_length", "stage 2 entries"),
    ):
        contents.plot(times, [row[key] for row in results["samples"]], label=label)
    contents.set_ylabel("entries")
    contents.set_xlabel("minutes")
    contents.legend(fontsize=8, loc="upper left")
    for axis in (memory, contents):
        axis.axvline(results["sizes"]["warmup_seconds"] / 60, color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        # Figures, table and plot again from the samples of an earlier run's soak.json.
        results = with_figures(json.loads(Path(sys.argv[2]).read_text()))
    else:
        results = run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "soak.md").write_text(markdown(results))
    plot(results, RESULTS / "soak.png")
    print(markdown(results))
    sys.exit(0 if results["flat"] and results["matches"] else 1)


if __name__ == "__main__":
    main()
