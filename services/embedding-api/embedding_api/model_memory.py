"""How much memory a loaded model takes: its weights as the backend holds them, and the process's resident memory
around its load, for the line and the gauge each model gets at start."""

from __future__ import annotations

import itertools
import os

from embedding_api.backends import Encoder, HashEncoder, OnnxEncoder, TorchEncoder


def weight_bytes(encoder: Encoder) -> tuple[int, str]:
    """The bytes of one copy's weights, and what was measured: torch's parameters and buffers (their element size
    included: fp16 on a GPU halves them), the ONNX file onnxruntime loaded, or nothing for the hash encoder."""
    if isinstance(encoder, TorchEncoder):
        tensors = itertools.chain(encoder.model.parameters(), encoder.model.buffers())
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors), "torch parameters and buffers"
    if isinstance(encoder, OnnxEncoder):
        return encoder.onnx_file.stat().st_size, "the ONNX file's size"
    if isinstance(encoder, HashEncoder):
        return 0, "the hash encoder has no weights"
    return 0, "unknown for this encoder"


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux's /proc/self/statm); None where that cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def mebibytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"
