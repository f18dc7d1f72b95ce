"""Search modes and the fusion of hybrid search: what a search compares, and how its two lists become one.

A collection with sparse vectors (SPARSE_MODEL) is searched dense (the query's embedding), sparse (its BM25 terms)
or hybrid (both, fused by reciprocal rank fusion in the engine). ``choose_search_mode`` decides the mode of a
search from what it asks for and what the collection holds, for the CLI and the upserter's /search alike; both
stores take RRF_K, ``rrf_weights`` and ``prefetch_limit`` from here, so they fuse alike.
"""

from __future__ import annotations

import re
from enum import StrEnum

from vecsync.errors import PermanentError

# Hybrid search fuses two searches of the same filter, the nearest points by the dense vector and by BM25, with
# reciprocal rank fusion: each point scores the sum over the two lists of weight / (RRF_K + its rank), ranks from
# 0. Each list holds at least HYBRID_PREFETCH points, and as many as the search's limit. The weights follow the
# query's shape (``rrf_weights``). Measured with the real model on 200 tickets naming one order number each
# (bench/fusion.py, bench/results/fusion.md): no fixed weights and k of 1,260 tried find both the ticket of an order
# number and that of a paraphrase first (RRF sees only ranks, and the dense list ranks identifiers nearly at
# random, the BM25 list paraphrases); these find 20 of 20 of each. See docs/design.md, "Hybrid search".
HYBRID_PREFETCH = 50
RRF_K = 1
# (dense, sparse). With k = 1, 3 against 1 puts the leading list's first hit first (3 beats at most 1 + 3/2), so
# no first place is a tie; the other list reorders the hits after it.
IDENTIFIER_WEIGHTS = (1.0, 3.0)
PROSE_WEIGHTS = (3.0, 1.0)
# A token of letters and digits joined by hyphens, holding a digit: an order number (ORD-48213-KX), an error code
# (SYNC-409), a part or invoice number (INV-2025-98060).
IDENTIFIER = re.compile(r"\b(?=[A-Za-z0-9-]*\d)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b")


class SearchMode(StrEnum):
    """What a search compares: the query's dense vector, its BM25 terms, or both fused."""

    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"

    @classmethod
    def of(cls, vector: list[float] | None, text: str | None) -> SearchMode:
        """The mode of a search given ``vector`` (dense), ``text`` (sparse) or both (hybrid)."""
        if vector is not None and text is not None:
            return cls.HYBRID
        if vector is not None:
            return cls.DENSE
        if text is not None:
            return cls.SPARSE
        raise ValueError("a search needs a query vector, a query text, or both")


def choose_search_mode(asked: object, *, vector: bool, text: bool, sparse: bool) -> tuple[SearchMode, str | None]:
    """The mode to search in, for a search that asks for ``asked`` (a SearchMode's value, or None for the default)
    with a query ``vector`` and a query ``text`` at hand or not, of a collection with ``sparse`` vectors or not;
    and a note where the mode is not the one asked for. PermanentError where no search can be made of that.

    The default is hybrid where the collection has sparse vectors and both are at hand, else what is at hand. A
    collection without sparse vectors is searched dense, with the note, where sparse or hybrid is asked for.
    """
    if asked is None:
        mode = SearchMode.HYBRID if vector and text and sparse else SearchMode.DENSE if vector else SearchMode.SPARSE
    elif isinstance(asked, str) and asked in {mode.value for mode in SearchMode}:
        mode = SearchMode(asked)
    else:
        raise PermanentError(f"The search mode must be one of {', '.join(SearchMode)}, not {asked!r}.")
    note = None
    if mode is not SearchMode.DENSE and not sparse:
        note = "the collection has no sparse vectors, so this search is dense only"
        mode = SearchMode.DENSE
    if (mode is not SearchMode.SPARSE and not vector) or (mode is not SearchMode.DENSE and not text):
        needs = {SearchMode.DENSE: "a query vector", SearchMode.SPARSE: "a query text", SearchMode.HYBRID: "both"}
        raise PermanentError(f"A {mode} search needs {needs[mode]}{f' ({note})' if note else ''}.")
    return mode, note


def rrf_weights(text: str) -> tuple[float, float]:
    """The weights (dense, sparse) of hybrid search's fusion for the query ``text``: the BM25 list leads where the
    query holds an identifier, which only exact terms find; the dense list leads otherwise, where meaning decides
    and BM25 matches incidental words. An identifier without a hyphen (2FA, error 500) counts as prose."""
    return IDENTIFIER_WEIGHTS if IDENTIFIER.search(text) else PROSE_WEIGHTS


def prefetch_limit(limit: int) -> int:
    """How many points each of hybrid search's two lists holds for a search of ``limit`` points."""
    return max(limit, HYBRID_PREFETCH)


def sparse_vector_missing(collection: str, sparse_model: str) -> str:
    """What to do where SPARSE_MODEL asks for sparse vectors that the existing ``collection`` was made without."""
    return (
        f"Qdrant collection {collection!r} was made without {sparse_model} sparse vectors, and Qdrant cannot add "
        f"them to an existing collection: its points are written and searched with dense vectors only, as before "
        f"SPARSE_MODEL={sparse_model}. To give every point its {sparse_model} vector, make the collection again: "
        "`vecsync rebuild` recreates it and refills it from stage 2, embedding nothing again that stage 2 still "
        "holds (search finds less until the rebuild ends); or sync into a new collection (another "
        "QDRANT_COLLECTION) and switch searches to it once it has caught up."
    )
