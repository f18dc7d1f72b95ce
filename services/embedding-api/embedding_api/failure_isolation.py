"""After a model call fails: find the texts the model fails on alone, or tell that the model itself is at fault.

The texts are encoded again in halves, and the failing halves in halves again, down to the texts the model fails on
alone; every other text still gets its vector. Before any text is blamed, the model must still encode a known-good
text (the warm-up text): a model that fails on that too is broken, and so is one out of memory; both raise
``ModelUnavailable``, which callers answer as retryable.
"""

from __future__ import annotations

import numpy as np

from embedding_api.backends import Encoder
from embedding_api.encoding_errors import ModelUnavailable

# Encoded at load, and again to tell a broken model from a text the model fails on.
KNOWN_GOOD_TEXTS = ["warm-up", "a second, somewhat longer warm-up text"]
# Room for a model's error in a reply and a dead letter, not for a whole stack dump.
MAX_ERROR_CHARS = 500


def encode_one_vector_each(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """``encoder.encode(texts)``, raising when it does not return exactly one vector per text."""
    vectors = encoder.encode(texts)
    if len(vectors) != len(texts):
        raise RuntimeError(f"the encoder returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def isolate_failing_texts(encoder: Encoder, texts: list[str], error: Exception) -> list[np.ndarray | str]:
    """Each text's vector, or the model's error on that text alone; ModelUnavailable when the model is at fault.

    ``error`` is what the model raised on all of ``texts`` together.
    """
    _raise_if_out_of_memory(error)
    outcomes: list[np.ndarray | str | None] = [None] * len(texts)
    _encode_in_halves(encoder, texts, list(range(len(texts))), error, outcomes)
    if any(isinstance(outcome, str) for outcome in outcomes):
        try:
            encode_one_vector_each(encoder, KNOWN_GOOD_TEXTS)
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            raise ModelUnavailable(
                f"the model fails on a known-good text too ({_describe_error(exc)}), so the model is at fault, "
                "not the texts"
            ) from exc
    return [outcome for outcome in outcomes if outcome is not None]


def _encode_in_halves(
    encoder: Encoder, texts: list[str], indexes: list[int], error: Exception, outcomes: list[np.ndarray | str | None]
) -> None:
    # The texts at ``indexes`` failed together with ``error``: encode each half, and split the failing halves again.
    if len(indexes) == 1:
        outcomes[indexes[0]] = _describe_error(error)
        return
    middle = len(indexes) // 2
    for part in (indexes[:middle], indexes[middle:]):
        try:
            vectors = encode_one_vector_each(encoder, [texts[i] for i in part])
        except Exception as exc:  # noqa: BLE001 - narrowed down further
            _raise_if_out_of_memory(exc)
            _encode_in_halves(encoder, texts, part, exc, outcomes)
            continue
        for i, vector in zip(part, vectors, strict=True):
            outcomes[i] = vector


def _raise_if_out_of_memory(exc: Exception) -> None:
    # torch.cuda.OutOfMemoryError, onnxruntime's "Failed to allocate memory", or the host's MemoryError: the device
    # was too full for this call, which says nothing about its texts.
    message = str(exc).lower()
    if (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "out of memory" in message
        or "failed to allocate memory" in message
    ):
        raise ModelUnavailable(f"the model ran out of memory ({_describe_error(exc)})") from exc


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
