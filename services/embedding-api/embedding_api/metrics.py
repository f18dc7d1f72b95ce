"""The embedding-api's Prometheus metrics: its own registry, its metric families, and what fills them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector

from embedding_api.backends import Encoder
from embedding_api.batching import BatchStats

# The embedding-api's own registry: the default one also holds the pipeline stages' families (vecsync.metrics, which
# vecsync.runtime imports), and those would only ever show here without values.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

REQUESTS = Counter(
    "vecsync_embedding_requests_total",
    "Requests answered, by endpoint and status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "vecsync_embedding_request_duration_seconds",
    "Time to answer a request.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TEXTS = Counter("vecsync_embedding_texts_total", "Texts encoded.", registry=REGISTRY)
TRUNCATED = Counter(
    "vecsync_embedding_truncated_texts_total",
    "Texts longer than the model's window, encoded from their beginning.",
    registry=REGISTRY,
)
MODEL_BATCH_SIZE = Histogram(
    "vecsync_embedding_model_batch_size",
    "Texts per model call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
MODEL_BATCH_TOKENS = Histogram(
    "vecsync_embedding_model_batch_tokens",
    "Tokens per model call (after truncation, before padding).",
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
    registry=REGISTRY,
)
MODEL_CALL_DURATION = Histogram(
    "vecsync_embedding_model_call_duration_seconds",
    "Time of one model call.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
FAILED_TEXTS = Counter(
    "vecsync_embedding_failed_texts_total",
    "Texts the model failed on by themselves while it still encoded a known-good text; their requests got 422.",
    registry=REGISTRY,
)
CHUNKS = Counter(
    "vecsync_embedding_api_chunks_total",
    "Chunks made by POST /chunk (a text that fits the budget is one chunk).",
    registry=REGISTRY,
)
QUEUE_TEXTS = Gauge("vecsync_embedding_queue_texts", "Texts accepted and not yet encoded.", registry=REGISTRY)
MODEL_MEMORY = Gauge(
    "vecsync_embedding_model_memory_bytes",
    "Memory the weights of a served model take, all its copies together: torch's parameters and buffers, the ONNX "
    "file's size for the onnx backends, 0 for the hash encoder.",
    ["model"],
    registry=REGISTRY,
)


class ModelInfo(Collector):
    """vecsync_embedding_model_info: one series per served model, naming it, its backend, device and dimension.

    An Info metric holds one series without labels of its own; the API serves several models, each its series."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def publish(self, labels: dict[str, str]) -> None:
        with self._lock:
            self._models[labels["model"]] = labels

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def collect(self) -> Iterator[InfoMetricFamily]:
        family = InfoMetricFamily("vecsync_embedding_model", "The models served, each with its backend and device.")
        with self._lock:
            for labels in self._models.values():
                family.add_metric([], labels)
        yield family


MODEL_INFO = ModelInfo()
REGISTRY.register(MODEL_INFO)


def observe_model_call(stats: BatchStats) -> None:
    """Record one merged model call: its texts, tokens, time and truncated texts."""
    MODEL_BATCH_SIZE.observe(stats.texts)
    MODEL_BATCH_TOKENS.observe(stats.tokens)
    MODEL_CALL_DURATION.observe(stats.seconds)
    if stats.truncated:
        TRUNCATED.inc(stats.truncated)


def publish_model_info(encoder: Encoder) -> None:
    """Name a loaded model, its backend, device and dimension in vecsync_embedding_model_info."""
    MODEL_INFO.publish(
        {"model": encoder.name, "backend": encoder.backend, "device": encoder.device, "dim": str(encoder.dim)}
    )


def forget_models() -> None:
    """Drop the series of the models served so far: a new app (in tests, one process builds many) names its own."""
    MODEL_INFO.clear()
    MODEL_MEMORY.clear()
