"""The collection's operations served on the upserter's HTTP port when it holds an embedded Qdrant store.

Only one process may open an embedded store, so the operator CLI searches,
counts, scrolls and recreates the collection through the upserter instead of
opening the store itself (see vecsync.cli.store.UpserterStore). Every one of
these routes, the reads and the write `/recreate` alike, requires the
upserter's key as a bearer token (vecsync.authenticated_routes, to which
vecsync.runtime.MetricsServer hands every POST): UPSERTER_API_KEY, or else a
random key the upserter writes at start to a file under DATA_DIR that only its
user may read, where a CLI on the same host finds it. /metrics and /healthz
stay open.

`/search` answers documents, each as its nearest chunk (VectorStore.search_documents), unless the request says
`"chunks": true`: then the nearest chunks themselves. Its "mode" is that of `vecsync search --mode`: "dense" needs
"vector" (the query's embedding), "sparse" needs "text" (the query, for its BM25 terms), "hybrid" needs both; left
out, it is hybrid where the collection has sparse vectors and both are given, else the one that is given. A
collection without sparse vectors is searched dense where "vector" is given, and the reply says so in "note". The
reply is {"hits": [{id, score, payload}], "mode": the mode searched}. `/collection` answers
{"collection", "sparse_vector"}: the name of the collection's sparse vector, or null; and, from an upserter that
follows names to their physical collections, "physical", "model" and "dim": the one the name serves now.

An upserter serving several Qdrant collections (the syncs of VECSYNC_CONFIG) answers for each: a request names
its collection in "collection"; one without names the first (the only one, in a deployment of one collection).
A request may also name a physical collection of that name in "physical" (`vecsync search` does, as it embeds
the query with that collection's model): it is answered from that collection while it exists, even once the name
has switched to another one, and with 409 once it is gone, so that the caller asks again what the name serves.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from upserter.named_collections import NamedCollections
from vecsync.authenticated_routes import PostRoute
from vecsync.errors import PermanentError
from vecsync.search_modes import SearchMode, choose_search_mode
from vecsync.vectorstore import VectorStore, store_key_file

SEARCH_FIELDS = (
    "'vector' (the query's embedding, a list of numbers) or 'text' (the query) or both, 'limit', 'match', and "
    "optional 'mode' (dense, sparse or hybrid) and 'chunks'"
)


def write_store_key(data_dir: Path) -> str:
    """A new random key, written to the key file under ``data_dir`` with mode 0600 (replacing any older one)."""
    key = secrets.token_urlsafe(32)
    path = store_key_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # the mode given to open() only applies to a file it creates
        file.write(key + "\n")
    os.replace(partial, path)
    return key


def store_routes(stores: Mapping[str, VectorStore] | VectorStore | NamedCollections) -> dict[str, PostRoute]:
    """The routes over ``stores`` (by Qdrant collection name; or one store; or the upserter's NamedCollections,
    which follow each name to the physical collection it serves), each answering for the collection that its
    request names."""
    names = stores if isinstance(stores, NamedCollections) else None
    served: dict[str, VectorStore] = {}
    if isinstance(stores, VectorStore):
        served = {stores.collection: stores}
    elif not isinstance(stores, NamedCollections):
        served = dict(stores)
    known = names.names if names is not None else list(served)
    default = known[0]

    def lookup(name: str, physical: object) -> tuple[VectorStore | None, tuple[int, Any] | None]:
        if names is None:
            return served.get(name), None
        if name not in known:
            return None, None
        if physical is None:
            return names.store(name, names.serving_collection(name)), None
        if isinstance(physical, str) and physical in names.catalog.collections():
            return names.store(name, physical), None
        serving = names.serving_collection(name)
        return None, (409, {"detail": f"Qdrant collection {physical!r} is gone; {name!r} serves {serving!r} now."})

    def route(answer: Callable[[VectorStore, dict[str, Any]], tuple[int, Any]], usage: str) -> PostRoute:
        def handle(body: Any) -> tuple[int, Any]:
            if not isinstance(body, dict):
                return 400, {"detail": f"Send a JSON object with {usage}, and optional 'collection'."}
            name = body.get("collection") or default
            store, refusal = lookup(name, body.get("physical")) if isinstance(name, str) else (None, None)
            if refusal is not None:
                return refusal
            if store is None:
                return 404, {
                    "detail": f"This upserter holds no Qdrant collection {name!r}; it holds "
                    f"{', '.join(map(repr, known))}. Check QDRANT_COLLECTION (or the sync's qdrant_collection)."
                }
            try:
                return answer(store, body)
            except PermanentError as exc:
                return 400, {"detail": str(exc)}

        return handle

    def search(store: VectorStore, body: dict[str, Any]) -> tuple[int, Any]:
        vector, text = body.get("vector"), body.get("text")
        if not (isinstance(vector, list) or vector is None) or not (isinstance(text, str) or text is None):
            return 400, {"detail": f"Send a JSON object with {SEARCH_FIELDS}."}
        chunks = body.get("chunks", False)
        if not isinstance(chunks, bool):
            return 400, {"detail": f"'chunks' must be true (chunk hits) or false (documents), not {chunks!r}."}
        mode, note = choose_search_mode(
            body.get("mode"), vector=vector is not None, text=text is not None, sparse=store.sparse_vector() is not None
        )
        find = store.search if chunks else store.search_documents
        hits = find(
            vector if mode is not SearchMode.SPARSE else None,
            limit=int(body.get("limit", 10)),
            match=body.get("match") or None,
            text=text if mode is not SearchMode.DENSE else None,
        )
        return 200, {"hits": [hit.__dict__ for hit in hits], "mode": mode.value} | ({"note": note} if note else {})

    def collection(store: VectorStore, body: dict[str, Any]) -> tuple[int, Any]:
        if names is None:
            return 200, {"collection": store.collection, "sparse_vector": store.sparse_vector()}
        name = body.get("collection") or default
        serving = names.state(name)[0]
        return 200, {
            "collection": name,
            "sparse_vector": store.sparse_vector(),
            "physical": store.collection,
            "model": serving.model if serving is not None and serving.collection == store.collection else None,
            "dim": store.dim,
        }

    def count(store: VectorStore, _body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"count": store.count()}

    def payloads(store: VectorStore, body: dict[str, Any]) -> tuple[int, Any]:
        if not isinstance(body.get("ids"), list):
            return 400, {"detail": "Send a JSON object with 'ids' (a list of point ids) and optional 'fields'."}
        return 200, {"payloads": store.payloads(body["ids"], body.get("fields"))}

    def scroll(store: VectorStore, body: dict[str, Any]) -> tuple[int, Any]:
        limit, offset, fields = int(body.get("limit", 256)), body.get("offset"), body.get("fields")
        page, next_offset = store.scroll(limit=limit, offset=offset, fields=fields)
        return 200, {"payloads": page, "next_offset": next_offset}

    def recreate(store: VectorStore, _body: dict[str, Any]) -> tuple[int, Any]:
        store.recreate()
        return 200, {"recreated": store.collection}

    return {
        "/search": route(search, SEARCH_FIELDS),
        "/count": route(count, "no field"),
        "/collection": route(collection, "no field"),
        "/payloads": route(payloads, "'ids' (a list of point ids) and optional 'fields'"),
        "/scroll": route(scroll, "'limit', 'offset' and optional 'fields'"),
        "/recreate": route(recreate, "no field"),
    }
