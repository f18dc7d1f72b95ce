"""Export a sentence-transformers model to ONNX once, into a writable cache, and quantise it.

The exported graph covers the whole sentence-transformers pipeline (transformer, pooling,
normalisation), so the ONNX backends need only onnxruntime and the tokenizer at run time.
BERT models are then fused with onnxruntime's transformer optimiser (attention, layer norm,
GELU) before the optional dynamic int8 quantisation: fused, the quantised model is both
faster and closer to the fp32 vectors. Files are keyed by a hash of the model folder, and
written atomically, so concurrent first starts and model changes are safe.

The libraries doing the work narrate it; quiet_loading sends that chatter to DEBUG, and the tracer warnings that are
expected for this graph are silenced where the graph is traced.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedding_api.model_digest import model_folder_digest
from embedding_api.quiet_loading import library_chatter_at_debug, load_without_progress_bar

log = logging.getLogger(__name__)

# Bump when the export recipe changes, so old cache entries are not reused.
EXPORT_VERSION = "1"
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def ensure_onnx_model(model_path: Path, cache_dir: Path, *, quantized: bool) -> Path:
    """The cached ONNX file for ``model_path``, exported (and quantised) first when missing."""
    folder = cache_dir / f"{model_path.name}-{_cache_key(model_path)}"
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
            _write_atomically(fp32, lambda tmp: _export(model_path, tmp))
        if quantized and not int8.exists():
            log.info("Quantising %s to int8", fp32)
            _write_atomically(int8, lambda tmp: _quantize(fp32, tmp))
    return target


def _cache_key(model_path: Path) -> str:
    """The folder's digest salted with EXPORT_VERSION: another model, or another recipe, gets another entry."""
    return model_folder_digest(model_path, EXPORT_VERSION.encode())[:16]


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file next to ``target``, then renamed over it: readers see all or nothing."""
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

    model = load_without_progress_bar(lambda: SentenceTransformer(str(model_path), device="cpu", model_kwargs=EAGER))
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
