"""The sparse vectors of points and queries: Qdrant's BM25, computed in this process for both stores.

A collection made with SPARSE_MODEL=bm25 has, beside its unnamed dense vector, a named sparse vector "bm25" with
Qdrant's IDF modifier. A point's sparse vector holds the term frequencies of its text (a chunk's text), weighted by
BM25's saturation and length normalisation; the engine multiplies in each term's inverse document frequency at
query time, over the collection as it is then, so a term in every document (the "ord" of every order number)
weighs almost nothing and a rare one (the order number itself) decides. A query's sparse vector holds each of its
terms once.

Where it is computed: in the store that writes the point, so in the upserter (see docs/design.md, "Hybrid
search"): from the `text` of the point's payload, which every stage 2 entry carries anyway. qdrant-edge-py's Bm25
(Qdrant's engine, with the server's configuration of BM25) ships with the embedded store, so both stores write and
query the same vectors with no new dependency.
"""

from __future__ import annotations

import qdrant_edge as qe

# The sparse vector's name in the collection, for each sparse model (constants.SPARSE_MODELS): the model's own name.
BM25 = "bm25"

# English tokenising, stemming and stopwords, k = 1.2, b = 0.75 and an average length of 256 tokens: Qdrant's own
# defaults for BM25.
_MODEL = qe.Bm25()


def document_vector(text: object) -> qe.SparseVector | None:
    """The BM25 vector of a point's text; None for a text without terms (empty, or stopwords only), as the engine
    stores no empty sparse vector."""
    if not isinstance(text, str):
        return None
    vector = _MODEL.embed_document(text)
    return vector if vector.indices else None


def query_vector(text: str) -> qe.SparseVector:
    """The BM25 vector of a query: each of its terms once (the engine weighs them by their IDF)."""
    return _MODEL.embed_query(text)
