"""The digest of a model folder: what tells one model's files from another's.

One digest serves two callers, each with its own salt and length: the model identity the API reports for a
MODEL_PATH folder (model_folder, no salt, 12 hex digits), which is stored with every point and in the text
fingerprints, and the key of the folder's ONNX cache entry (onnx_export, salted with its export version, 16 hex
digits), which names folders on disk. Both values are exactly what they were before the two shared this function,
so stored points and existing ONNX caches stay valid.

A leaf: it imports nothing of embedding_api, so every module may use it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def model_folder_digest(folder: Path, salt: bytes = b"") -> str:
    """SHA-256 in hex over ``salt``, then every file under ``folder`` (its path, then its content) in path order.

    Cached per process: the folder is hashed once however many model copies are loaded from it.
    """
    digest = hashlib.sha256(salt)
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
