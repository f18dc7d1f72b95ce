"""Export a sentence-transformers model to ONNX once, into a writable cache, and quantise it.

The exported graph covers the whole sentence-transformers pipeline (transformer, pooling,
normalisation), so the ONNX backends need only onnxruntime and the tokenizer at run time.
BERT models are then fused with onnxruntime's transformer optimiser (attention, layer norm,
GELU) before the optional dynamic int8 quantisation: fused, the quantised model is both
faster and closer to the fp32 vectors. Files are keyed by a hash of the model folder, and
written atomically, so concurrent first starts and model changes are safe.

The libraries doing the work narrate it: a line per fusion and per quantised tensor at INFO, a weight-loading
progress bar and tracer warnings that are expected for this graph. Such chatter goes to DEBUG, so that the
embedding-api's log shows what it does (export, quantise, load) and any real warning or error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embedding_api.backends import hash_model_files

log = logging.getLogger(__name__)

# Bump when the export recipe changes, so old cache entries are not reused.
EXPORT_VERSION = "1"
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# Loggers whose records are this service's own (or its server's): never demoted.
OWN_LOGGERS = ("embedding_api", "vecsync", "uvicorn")
# Library warnings that are expected for this export recipe and say nothing an operator can act on.
EXPECTED_WARNINGS = (
    # onnxruntime's quantiser asks for its shape pre-processing; the fused graph is quantised as it is, on purpose.
    "Please consider to run pre-processing before quantization",
)


def ensure_onnx_model(model_path: Path, cache_dir: Path, *, quantized: bool) -> Path:
    """The cached ONNX file for ``model_path``, exported (and quantised) first when missing."""
    folder = cache_dir / f"{model_path.name}-{model_fingerprint(model_path)}"
    fp32 = folder / "model.onnx"
    int8 = folder / "model-int8.onnx"
    target = int8 if quantized else fp32
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(
            f"Cannot create the ONNX cache {folder} ({exc}); set ONNX_CACHE_DIR to a writable folder"
        ) from exc
    with library_chatter_at_debug():
        if not fp32.exists():
            log.info("Exporting %s to ONNX into %s (once)", model_path, folder)
            _atomic(fp32, lambda tmp: _export(model_path, tmp))
        if quantized and not int8.exists():
            log.info("Quantising %s to int8", fp32)
            _atomic(int8, lambda tmp: _quantize(fp32, tmp))
    return target


class _DemoteLibraryChatter(logging.Filter):
    """Turns the export libraries' INFO lines, and their expected warnings, into DEBUG records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OWN_LOGGERS) or record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING and not record.getMessage().startswith(EXPECTED_WARNINGS):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextmanager
def library_chatter_at_debug() -> Iterator[None]:
    """While the model is exported and quantised, log what the libraries narrate at DEBUG (see the module doc)."""
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


def model_fingerprint(model_path: Path) -> str:
    digest = hashlib.sha256(EXPORT_VERSION.encode())
    hash_model_files(digest, model_path)
    return digest.hexdigest()[:16]


def _atomic(target: Path, write: Any) -> None:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _export(model_path: Path, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer
    from torch.jit._trace import TracerWarning

    model = load_quietly(lambda: SentenceTransformer(str(model_path), device="cpu", model_kwargs=EAGER))
    model.eval()

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            output: torch.Tensor = self.model(features)["sentence_embedding"]
            return output

    sample = model.tokenizer(["a short text", "and a somewhat longer second text"], padding=True, return_tensors="pt")
    args = tuple(sample.get(name, torch.zeros_like(sample["input_ids"])) for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUT_NAMES} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # Expected for this graph, and said once per export: the tracer records the shapes of the sample input
        # (the dynamic axes cover them), and opset 17 spells advanced indexing with several operators.
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", TracerWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        torch.onnx.export(
            Pipeline().eval(),
            args,
            str(target),
            input_names=INPUT_NAMES,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    _fuse(model_path, target)


# Eager attention exports as plain MatMul/Softmax, which onnxruntime's optimiser fuses; SDPA does not fuse.
EAGER = {"attn_implementation": "eager"}


def load_quietly(load: Any) -> Any:
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


def _fuse(model_path: Path, target: Path) -> None:
    config_file = model_path / "config.json"
    config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get("model_type") != "bert":
        return  # the optimiser's fusions are written for BERT-like graphs; others run unfused
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(target),
            model_type="bert",
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            opt_level=1,
        )
        optimized.save_model_to_file(str(target))
    except Exception:  # an unfused model is still correct, only slower
        log.exception("Could not fuse the ONNX graph; using it unfused")


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights keep the cosine to fp32 near 0.99; fused ops need a default type for shape inference.
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
