"""How many model copies (workers) the embedding-api runs, and how many CPU threads each copy may use."""

from __future__ import annotations

import os

from embedding_api.settings import EmbeddingApiSettings

# Model workers when MODEL_WORKERS is unset, on a CPU (bench/results/embed.md, 2 cores): two single-threaded
# onnx-int8 copies encode 12-17% more than one copy on both cores, whose threads wait for each other at every layer.
# onnx (fp32) gained nothing from a second copy (152-154 texts/s either way), and torch loses splitting each request,
# so they keep one copy on every core.
CPU_MODEL_WORKERS = {"onnx-int8": 2}


def model_workers(settings: EmbeddingApiSettings, backend: str | None = None) -> int:
    """MODEL_WORKERS, or when unset the measured best: one copy, except for onnx-int8 (which runs on a CPU only).

    ``backend`` is the served model's (one of EMBEDDING_MODELS); EMBEDDING_BACKEND when not given. Each served model
    gets this many copies of its own."""
    if settings.model_workers is not None:
        return settings.model_workers
    return min(CPU_MODEL_WORKERS.get(backend or settings.embedding_backend, 1), _usable_cores())


def cpu_threads_per_worker(settings: EmbeddingApiSettings, backend: str | None = None) -> int:
    """The CPU threads one model copy may use: its share of the cores this process may run on; 0 (every core, the
    backend's own default) when it is the only copy."""
    workers = model_workers(settings, backend)
    return max(1, _usable_cores() // workers) if workers > 1 else 0


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
