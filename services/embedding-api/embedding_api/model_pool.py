"""The models an app serves, each with its own Batcher (queue, dynamic batching, model copies) and its own chunker;
their loading in the background, one load at a time, and the memory each model took, logged and in a gauge."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from embedding_api.backends import Encoder, load_model
from embedding_api.batching import Batcher
from embedding_api.chunker import TextChunker, chunker_for
from embedding_api.metrics import MODEL_MEMORY, publish_model_info
from embedding_api.model_memory import mebibytes, resident_bytes, weight_bytes
from embedding_api.served_models import ModelSource
from embedding_api.settings import EmbeddingApiSettings
from embedding_api.worker_layout import model_workers

log = logging.getLogger("vecsync.embedding_api")


class ServedModel:
    """One model the app serves: its batcher and its chunker (built at the first POST /chunk naming it)."""

    def __init__(self, batcher: Batcher, chunker: Callable[[], TextChunker], identity: str | None) -> None:
        self.batcher = batcher
        self._build_chunker = chunker
        self._chunker: TextChunker | None = None
        # Known before the load for a model of the settings; None for an encoder handed in, named once loaded.
        self.identity = identity

    @property
    def name(self) -> str | None:
        """What requests name the model by; None while an encoder handed in still loads."""
        if self.identity is not None:
            return self.identity
        encoder = self.batcher.encoder
        return encoder.name if encoder is not None else None

    def chunker(self) -> TextChunker:
        # Kept once built; a failure is not, so a later request tries again.
        if self._chunker is None:
            self._chunker = self._build_chunker()
        return self._chunker


class _MeasuredLoad:
    """Loads copies of one served model, one load at a time among all the app's models (so the resident memory the
    process gained during a load is that load's), adding up what each load gained."""

    def __init__(self, source: ModelSource, settings: EmbeddingApiSettings, one_at_a_time: threading.Lock) -> None:
        self.source = source
        self.settings = settings
        self.one_at_a_time = one_at_a_time
        self.resident_growth: int | None = 0

    def __call__(self) -> Encoder:
        with self.one_at_a_time:
            before = resident_bytes()
            encoder = load_model(self.source, self.settings)
            after = resident_bytes()
        if before is None or after is None or self.resident_growth is None:
            self.resident_growth = None
        else:
            self.resident_growth += after - before
        return encoder


def report_memory(encoder: Encoder, copies: int, resident_growth: int | None = None) -> None:
    """Log the memory a loaded model takes and set its vecsync_embedding_model_memory_bytes."""
    each, measured = weight_bytes(encoder)
    MODEL_MEMORY.labels(model=encoder.name).set(each * copies)
    grown = (
        f"; the process's resident memory grew by {mebibytes(resident_growth)} while it loaded (a load that imports "
        "its backend's libraries first, torch or onnxruntime, counts them too)"
        if resident_growth is not None
        else ""
    )
    log.info(
        "Model %s (%s on %s, %d dimensions, %d %s) takes %s: %s%s",
        encoder.name,
        encoder.backend,
        encoder.device,
        encoder.dim,
        copies,
        "copy" if copies == 1 else "copies",
        mebibytes(each * copies),
        measured,
        grown,
    )


def models_of_settings(
    settings: EmbeddingApiSettings,
    sources: list[ModelSource],
    batcher_options: dict[str, Any],
    default_chunker: TextChunker | None = None,
) -> list[ServedModel]:
    """A served model per source, each loading in the background (one load at a time) and warmed up before it
    turns ready. ``default_chunker`` stands in for the default model's own."""
    one_at_a_time = threading.Lock()
    models = []
    for position, source in enumerate(sources):
        load = _MeasuredLoad(source, settings, one_at_a_time)
        copies = model_workers(settings, source.backend)

        def on_ready(encoder: Encoder, load: _MeasuredLoad = load, copies: int = copies) -> None:
            publish_model_info(encoder)
            report_memory(encoder, copies, load.resident_growth)

        batcher = Batcher(
            load, workers=copies, warm_up=True, background_load=True, on_ready=on_ready, **batcher_options
        )

        def chunker(source: ModelSource = source) -> TextChunker:
            return chunker_for(source)

        if position == 0 and default_chunker is not None:
            models.append(ServedModel(batcher, lambda: default_chunker, source.identity))
        else:
            models.append(ServedModel(batcher, chunker, source.identity))
    return models
