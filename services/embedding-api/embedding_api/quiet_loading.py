"""Keeping the model libraries' narration out of the log while a model is loaded, exported or quantised.

The libraries doing that work narrate it: a line per fusion and per quantised tensor at INFO, a weight-loading
progress bar and warnings that are expected here. Such chatter goes to DEBUG (or, for the progress bar, nowhere),
so that the embedding-api's log shows what it does (export, quantise, load) and any real warning or error.

A leaf: it imports nothing of embedding_api, so every module may use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

Loaded = TypeVar("Loaded")

# Loggers whose records are this service's own (or its server's): never demoted.
OWN_LOGGERS = ("embedding_api", "vecsync", "uvicorn")
# Library warnings that are expected for the ONNX export recipe and say nothing an operator can act on.
EXPECTED_WARNINGS = (
    # onnxruntime's quantiser asks for its shape pre-processing; the fused graph is quantised as it is, on purpose.
    "Please consider to run pre-processing before quantization",
)


class _DemoteLibraryChatter(logging.Filter):
    """Turns the libraries' INFO lines, and their expected warnings, into DEBUG records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OWN_LOGGERS) or record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING and not record.getMessage().startswith(EXPECTED_WARNINGS):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextmanager
def library_chatter_at_debug() -> Iterator[None]:
    """Inside the block, log what the libraries narrate at DEBUG; their errors and unexpected warnings stay."""
    demote = _DemoteLibraryChatter()
    # On the handlers: a filter on a logger never sees the records that propagate to it from its children.
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(demote)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(demote)


def load_without_progress_bar(load: Callable[[], Loaded]) -> Loaded:
    """``load()`` without transformers' weight-loading progress bar, which would fill the log with carriage returns."""
    from transformers.utils import logging as typed_logging

    transformers_logging: Any = typed_logging  # its progress-bar switches are not annotated
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()
