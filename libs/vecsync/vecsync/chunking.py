"""Chunks of a long document: their point ids, and the word-count split that stands in where no tokenizer is.

A document whose text fits the model's window is one chunk, its whole text, under the document's own point id, so a
short document keeps the one point it had before chunking existed. A longer one is split by the embedding-api
(``POST /chunk``), which holds the model's tokenizer; chunk 0 keeps the document's point id and chunk i > 0 gets
``chunk_point_id(document_point_id, i)``. See docs/design.md, "Long documents".
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from vecsync.documents import POINT_NAMESPACE

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document's text: its place, its span in the text, and its text (``text[start:end]``)."""

    index: int
    start: int
    end: int
    text: str


def chunk_point_id(document_point_id: str, index: int) -> str:
    """The point id of chunk ``index`` of a document: the document's own for chunk 0, a UUIDv5 of both otherwise."""
    if index == 0:
        return document_point_id
    return str(uuid.uuid5(POINT_NAMESPACE, f"{document_point_id}#chunk-{index}"))


def chunks_at(text: str, spans: list[tuple[int, int]]) -> list[Chunk]:
    """The chunks of ``text`` at ``spans``, in order."""
    return [Chunk(index, start, end, text[start:end]) for index, (start, end) in enumerate(spans)]


def word_spans(text: str, words: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of at most ``words`` whitespace-separated words, consecutive spans sharing ``overlap`` words.

    The split of the hash backend, which has no tokenizer: a text of at most ``words`` words is one span, the whole
    text, exactly as the model's split keeps a text that fits its window.
    """
    if words < 1:
        raise ValueError(f"a chunk must hold at least one word, not {words}")
    found = [match.span() for match in _WORD.finditer(text)]
    if len(found) <= words:
        return [(0, len(text))]
    step = max(1, words - max(0, overlap))
    spans = []
    for first in range(0, len(found), step):
        last = min(first + words, len(found)) - 1
        spans.append((found[first][0], found[last][1]))
        if last == len(found) - 1:
            break
    return spans
