"""Benchmark of the embedding-api (``make bench-embed``): a measurement, not a test.

Runs, side by side in one process tree on this machine:

1. in-process encoding against HTTP /encode_batch, at batch 32, for each backend;
2. 1, 4 and 16 concurrent clients each sending single texts to /encode, with dynamic batching on and off;
3. onnx and onnx-int8 against torch: throughput, and the cosine similarity of their vectors.

Sizes come from the environment (BENCH_TEXTS, BENCH_ROUNDS, BENCH_SECONDS, BENCH_BACKENDS, BENCH_CLIENTS,
BENCH_LOAD_BACKEND); results go to bench/results/embed.json and bench/results/embed.md, and a summary is printed.
The machine may be shared: compare the ratios, which are measured close together, rather than the absolute rates.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import start_embedding_api  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORKDIR = ROOT / "data" / "bench-embed"  # the servers' logs
SAMPLES = ROOT / "samples" / "support_tickets.jsonl"

TEXTS = int(os.environ.get("BENCH_TEXTS", "256"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
BACKENDS = os.environ.get("BENCH_BACKENDS", "torch,onnx,onnx-int8").split(",")
CLIENTS = [int(n) for n in os.environ.get("BENCH_CLIENTS", "1,4,16").split(",")]
LOAD_BACKEND = os.environ.get("BENCH_LOAD_BACKEND", "onnx-int8")
DEVICE = os.environ.get("DEVICE", "cpu")
BATCH = 32
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def sample_texts(count: int) -> list[str]:
    tickets = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    texts = [f"{t['subject']}\n\n{t['content']}" for t in tickets]
    # Cycle with a suffix, so every text is distinct and nothing is served from a cache.
    return [f"{texts[i % len(texts)]} ({i // len(texts)})" if i >= len(texts) else texts[i] for i in range(count)]


class Server:
    """An embedding-api on its own port, with a keep-alive HTTP client for the benchmark's requests."""

    def __init__(self, backend: str, **settings: str) -> None:
        # Building an ONNX export at the first start can take minutes.
        self.server = start_embedding_api(
            WORKDIR, backend, ready_timeout=300, DEVICE=DEVICE, LOG_LEVEL="WARNING", **settings
        )
        self.port = self.server.port

    def request(
        self, method: str, path: str, body: Any, connection: http.client.HTTPConnection | None = None
    ) -> tuple[int, bytes]:
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if connection is None:
            conn.close()
        return response.status, data

    def stop(self) -> None:
        self.server.stop()


def load_in_process(backend: str, workers: int = 1) -> Any:
    """One encoder on every core (``workers=1``: what a program embedding the model gets), or one of ``workers``."""
    from embedding_api.backends import load_encoder
    from embedding_api.settings import EmbeddingApiSettings

    settings = EmbeddingApiSettings(embedding_backend=backend, device=DEVICE, model_workers=workers)  # type: ignore[arg-type]
    return load_encoder(settings)


def server_workers(backend: str) -> int:
    from embedding_api.settings import EmbeddingApiSettings
    from embedding_api.worker_layout import model_workers

    return model_workers(EmbeddingApiSettings(embedding_backend=backend, device=DEVICE))  # type: ignore[arg-type]


def in_process_split(encoders: list[Any], texts: list[str]) -> float:
    """Texts per second in the server's layout, in this process: each batch of 32 shared by the workers' copies,
    cut, as the server cuts it, into runs of consecutive texts with equal shares of the tokens."""
    from concurrent.futures import ThreadPoolExecutor

    _torch_threads(encoders[0], (os.cpu_count() or 1) // len(encoders))
    batches = [split_by_tokens(encoders[0], texts[i : i + BATCH], len(encoders)) for i in range(0, len(texts), BATCH)]
    with ThreadPoolExecutor(len(encoders)) as pool:
        list(pool.map(lambda pair: pair[0].encode(pair[1]), zip(encoders, batches[0], strict=False)))  # warm-up
        started = time.perf_counter()
        for parts in batches:
            list(pool.map(lambda pair: pair[0].encode(pair[1]), zip(encoders, parts, strict=False)))
    return len(texts) / (time.perf_counter() - started)


def split_by_tokens(encoder: Any, texts: list[str], ways: int) -> list[list[str]]:
    counts = [min(n, encoder.max_tokens) for n in encoder.count_tokens(texts)]
    share = -(-sum(counts) // ways)
    parts: list[list[str]] = [[]]
    tokens = 0
    for text, count in zip(texts, counts, strict=True):
        if parts[-1] and tokens + count > share and len(parts) < ways:
            parts.append([])
            tokens = 0
        parts[-1].append(text)
        tokens += count
    return parts


def _torch_threads(encoder: Any, threads: int) -> None:
    # torch's thread count is one setting for the whole process: set it for the layout being measured.
    if encoder.backend == "torch":
        import torch

        torch.set_num_threads(max(1, threads))


def in_process(encoder: Any, texts: list[str]) -> tuple[float, np.ndarray]:
    """Texts per second encoding ``texts`` in batches of 32 in this process, and the vectors."""
    _torch_threads(encoder, os.cpu_count() or 1)
    encoder.encode(texts[:BATCH])  # warm-up
    started = time.perf_counter()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), BATCH):
        vectors.extend(encoder.encode(texts[start : start + BATCH]))
    rate = len(texts) / (time.perf_counter() - started)
    return rate, np.asarray(vectors, dtype=np.float32)


def over_http(server: Server, texts: list[str]) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    server.request("POST", "/encode_batch", {"texts": texts[:BATCH]}, connection)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        status, _ = server.request("POST", "/encode_batch", {"texts": texts[start : start + BATCH]}, connection)
        assert status == 200, status
    connection.close()
    return len(texts) / (time.perf_counter() - started)


def concurrent_singles(server: Server, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    """Texts per second with ``clients`` threads each sending one text per request, for ``seconds``."""
    done = [0] * clients
    errors = [0] * clients
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        i = number
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, _ = server.request("POST", "/encode", {"text": texts[i % len(texts)]}, connection)
            latencies.append(time.perf_counter() - started)
            if status == 200:
                done[number] += 1
            else:
                errors[number] += 1
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "texts_per_s": sum(done) / elapsed,
        "errors": float(sum(errors)),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


def cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    values = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(values.min()), float(values.mean())


def main() -> None:
    texts = sample_texts(TEXTS)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "device": DEVICE},
        "sizes": {"texts": TEXTS, "seconds_per_load_run": SECONDS, "batch": BATCH, "clients": CLIENTS},
        "backends": {},
        "load": {"backend": LOAD_BACKEND, "runs": []},
    }
    vectors: dict[str, np.ndarray] = {}
    for backend in BACKENDS:
        encoder = load_in_process(backend)
        workers = server_workers(backend)
        copies = [load_in_process(backend, workers) for _ in range(workers)]
        server = Server(backend)
        local_rates, split_rates, http_rates, ratios, split_ratios = [], [], [], [], []
        try:
            # Alternate in-process and HTTP passes, so a neighbour's load shows on both sides of each ratio.
            for _round in range(ROUNDS):
                rate, vectors[backend] = in_process(encoder, texts)
                split_rate = in_process_split(copies, texts) if workers > 1 else rate
                http_rate = over_http(server, texts)
                local_rates.append(rate)
                split_rates.append(split_rate)
                http_rates.append(http_rate)
                ratios.append(http_rate / rate)
                split_ratios.append(http_rate / split_rate)
            del encoder, copies
        finally:
            server.stop()
        base = statistics.median(local_rates)
        results["backends"][backend] = {
            "in_process_texts_per_s": base,
            "server_workers": workers,
            "in_process_as_server_texts_per_s": statistics.median(split_rates),
            "http_texts_per_s": statistics.median(http_rates),
            "http_over_in_process": statistics.median(ratios),
            "http_over_in_process_rounds": ratios,
            "http_over_in_process_as_server": statistics.median(split_ratios),
        }
        print(
            f"{backend}: in-process {base:.0f}/s, HTTP/in-process {statistics.median(ratios):.2f}x, "
            f"HTTP/in-process as the server's {workers} workers {statistics.median(split_ratios):.2f}x",
            flush=True,
        )
    if LOAD_BACKEND in BACKENDS:
        run_load(results, texts)
    if "torch" in vectors:
        compare_with_torch(results, vectors, texts)
    results["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render(results)
    (RESULTS / "embed.md").write_text(markdown)
    print(markdown)


def compare_with_torch(results: dict[str, Any], vectors: dict[str, np.ndarray], texts: list[str]) -> None:
    """Each backend's speed over torch, from in-process passes interleaved round by round, and its cosine."""
    encoders = {backend: load_in_process(backend) for backend in BACKENDS}
    ratios: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    for _round in range(ROUNDS):
        rates = {backend: in_process(encoder, texts)[0] for backend, encoder in encoders.items()}
        for backend in BACKENDS:
            ratios[backend].append(rates[backend] / rates["torch"])
    for backend, info in results["backends"].items():
        info["speed_over_torch"] = statistics.median(ratios[backend])
        info["speed_over_torch_rounds"] = ratios[backend]
        info["cosine_to_torch_min"], info["cosine_to_torch_mean"] = cosine(vectors[backend], vectors["torch"])
        print(f"{backend}: {info['speed_over_torch']:.2f}x torch, cosine min {info['cosine_to_torch_min']:.4f}")


def run_load(results: dict[str, Any], texts: list[str]) -> None:
    """Single-text clients against batching on and off, each next to an in-process pass at batch 32."""
    encoder = load_in_process(LOAD_BACKEND)
    workers = server_workers(LOAD_BACKEND)
    copies = [load_in_process(LOAD_BACKEND, workers) for _ in range(workers)]
    servers = {True: Server(LOAD_BACKEND), False: Server(LOAD_BACKEND, MAX_BATCH_SIZE="1")}
    try:
        for clients in CLIENTS:
            base, _ = in_process(encoder, texts)
            split = in_process_split(copies, texts) if workers > 1 else base
            for batching, server in servers.items():
                run = concurrent_singles(server, texts, clients, SECONDS)
                run.update({"clients": clients, "batching": batching, "in_process_batch32_texts_per_s": base})
                run["over_in_process_batch32"] = run["texts_per_s"] / base
                run["in_process_as_server_texts_per_s"] = split
                run["over_in_process_as_server"] = run["texts_per_s"] / split
                results["load"]["runs"].append(run)
                mode = "on" if batching else "off"
                print(
                    f"{LOAD_BACKEND} {clients} clients, batching {mode}: {run['texts_per_s']:.0f}/s "
                    f"({run['over_in_process_batch32']:.2f}x in-process at batch 32)",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Embedding API benchmark",
        "",
        f"{results['machine']['cpus']} CPUs, device {results['machine']['device']}, {results['sizes']['texts']} "
        f"sample texts, batch {BATCH}; {results['seconds']:.0f} s in all. Absolute rates are noisy on a shared "
        "machine; the ratios were measured side by side.",
        "",
        "## Backends: in-process against HTTP at batch 32, and against torch (in-process, interleaved)",
        "",
        "In-process is one copy of the model on every core, as a program embedding the model runs it. The server "
        "runs MODEL_WORKERS copies side by side; *as server* is that layout in-process (each batch of 32 shared "
        "by the copies).",
        "",
        "| backend | in-process texts/s | as server (workers) | HTTP texts/s | HTTP / in-process "
        "| HTTP / as server | speed / torch | cosine to torch (min, mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, info in results["backends"].items():
        cos = (
            f"{info['cosine_to_torch_min']:.4f}, {info['cosine_to_torch_mean']:.4f}"
            if "cosine_to_torch_min" in info
            else "-"
        )
        speed = f"{info['speed_over_torch']:.2f}x" if "speed_over_torch" in info else "-"
        lines.append(
            f"| {backend} | {info['in_process_texts_per_s']:.0f} | {info['in_process_as_server_texts_per_s']:.0f} "
            f"({info['server_workers']}) | {info['http_texts_per_s']:.0f} | {info['http_over_in_process']:.2f}x | "
            f"{info['http_over_in_process_as_server']:.2f}x | {speed} | {cos} |"
        )
    lines += [
        "",
        f"## Concurrent clients sending single texts ({results['load']['backend']}, "
        f"{results['sizes']['seconds_per_load_run']:.0f} s each)",
        "",
        "| clients | dynamic batching | texts/s | / in-process at batch 32 | / as server at batch 32 "
        "| p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["load"]["runs"]:
        lines.append(
            f"| {run['clients']} | {'on' if run['batching'] else 'off'} | {run['texts_per_s']:.0f} | "
            f"{run.get('over_in_process_batch32', 0):.2f}x | {run.get('over_in_process_as_server', 0):.2f}x | "
            f"{run['p50_ms']:.0f} | {run['p99_ms']:.0f} | "
            f"{run['errors']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
