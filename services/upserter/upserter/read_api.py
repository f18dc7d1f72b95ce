"""Reads served on the upserter's HTTP port when it holds an embedded Qdrant store.

Only one process may open an embedded store, so the operator CLI searches and
counts through the upserter instead of opening the store itself.
"""

from __future__ import annotations

from typing import Any

from vecsync.runtime import PostRoute
from vecsync.vectorstore import VectorStore


def read_routes(store: VectorStore) -> dict[str, PostRoute]:
    def search(body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("vector"), list):
            return 400, {"detail": "Send a JSON object with 'vector' (a list of numbers), 'limit' and 'match'."}
        hits = store.search(body["vector"], limit=int(body.get("limit", 10)), match=body.get("match") or None)
        return 200, {"hits": [hit.__dict__ for hit in hits]}

    def count(_body: Any) -> tuple[int, Any]:
        return 200, {"count": store.count()}

    return {"/search": search, "/count": count}
