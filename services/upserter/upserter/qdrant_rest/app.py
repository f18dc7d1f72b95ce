"""The routes of Qdrant's REST API over the embedded store: which are served, who may call them, and the replies.

Every reply has Qdrant's shape: ``{"result": ..., "status": "ok", "time": seconds}``, or on an error
``{"status": {"error": message}, "time": seconds}`` with Qdrant's status codes (400 a bad request, 401 a missing
or wrong key, 403 a write refused, 404 no such collection or point). A route or method of Qdrant's API that is not
served answers 501 naming it, never a reply of another shape.

Names follow aliases as on a Qdrant server: `documents` reads the physical collection the name serves now.

Reads are for everyone holding a key; point writes are vecsync's own (the version fence, docs/design.md, would be
bypassed by a write from outside), so they are refused, except in a collection vecsync does not sync where
``writable`` allows them. ``DELETE /collections/{name}`` is allowed with the read-write key (the seed's rebuild
runbook): a collection vecsync syncs is made again at once, empty, and refilled by replaying stage 2.

Keys as Qdrant has them: the ``api-key`` header or an ``Authorization: Bearer`` token; ``read_write`` may do
everything above, ``read_only`` may read. Without any key, only clients on this host (127.0.0.1, ::1) are served.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from upserter.qdrant_rest import convert, writes
from upserter.qdrant_rest.collections_view import Collections, Refusal
from upserter.qdrant_rest.convert import BadRequest, NotServed
from vecsync.errors import PermanentError, TransientError
from vecsync.store.embedded_catalog import EmbeddedCatalog

log = logging.getLogger("vecsync.upserter")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# The methods a route may be called with; any other answers 501 naming it.
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True)
class RestKeys:
    """The keys of the REST API (QDRANT_API_KEY, QDRANT_READ_ONLY_API_KEY); neither set: this host only."""

    read_write: str | None = None
    read_only: str | None = None

    @property
    def any(self) -> bool:
        return self.read_write is not None or self.read_only is not None


def served_version() -> str:
    """The version of Qdrant's API whose request and response models this server follows: qdrant-client's own,
    so that the client finds itself compatible."""
    return importlib.metadata.version("qdrant-client")


def create_app(
    catalog: EmbeddedCatalog,
    keys: RestKeys,
    *,
    synced: Callable[[str], bool],
    writable: frozenset[str] = frozenset(),
) -> FastAPI:
    """The REST API over ``catalog``: ``synced`` tells the collections (names and physical ones) vecsync writes,
    ``writable`` the other collections whose points may be written from outside ("*": every other one)."""
    collections = Collections(catalog, synced=synced, writable=writable)
    app = FastAPI(title="vecsync embedded Qdrant", docs_url=None, redoc_url=None, openapi_url=None)
    version = served_version()

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        try:
            request.state.access = _access(request, keys)
        except Refusal as exc:
            return _error(exc.status, str(exc), started)
        return await call_next(request)

    def route(path: str, methods: list[str], *, write: bool = False) -> Callable[[Callable[..., Any]], Any]:
        """Serve ``path``: the handler runs on a worker thread (the engine blocks), its result wrapped in Qdrant's
        reply; its refusals, bad requests and the engine's errors become Qdrant's error replies."""

        def register(handler: Callable[..., Any]) -> Any:
            async def endpoint(request: Request) -> Response:
                started = time.perf_counter()
                try:
                    if write and request.state.access != "read-write":
                        raise Refusal(403, "Forbidden: Write access denied (this key may only read)")
                    body = await _json_body(request) if request.method in ("POST", "PUT", "PATCH") else {}
                    result = await run_in_threadpool(handler, body=body, **request.path_params)
                except Refusal as exc:
                    return _error(exc.status, str(exc), started)
                except BadRequest as exc:
                    return _error(400, f"Bad request: {exc}", started)
                except NotServed as exc:
                    return _error(501, _not_served(request, str(exc)), started)
                except PermanentError as exc:
                    return _error(400, f"Bad request: {exc}", started)
                except TransientError as exc:
                    return _error(503, f"Service unavailable: {exc}", started)
                except Exception as exc:  # answered in Qdrant's shape, as a server answers its own failures
                    log.exception("Qdrant REST API: %s %s failed", request.method, request.url.path)
                    return _error(500, f"Service internal error: {exc}", started)
                return _reply(result, started)

            app.add_api_route(path, endpoint, methods=methods)
            return handler

        return register

    # Service --------------------------------------------------------------------------------------------------

    @route("/", ["GET"])
    def root(body: Any) -> Any:
        return _Raw({"title": "vecsync embedded Qdrant (Qdrant's engine, qdrant-edge)", "version": version})

    for probe in ("/healthz", "/livez", "/readyz"):
        app.add_api_route(probe, _probe, methods=["GET"])

    # Collections ----------------------------------------------------------------------------------------------

    @route("/collections", ["GET"])
    def list_collections(body: Any) -> Any:
        return {"collections": [{"name": name} for name in catalog.collections()]}

    @route("/collections/{name}", ["GET"])
    def collection_info(body: Any, name: str) -> Any:
        store = collections.store(name)
        with store.engine("read the collection's info") as shard:
            info = shard.info()
        return convert.collection_info(info, store.path)

    @route("/collections/{name}/exists", ["GET"])
    def collection_exists(body: Any, name: str) -> Any:
        physical = catalog.resolve(name)
        return {"exists": physical is not None and catalog.holds(physical)}

    @route("/collections/{name}", ["DELETE"], write=True)
    def delete_collection(body: Any, name: str) -> Any:
        physical = catalog.resolve(name)
        if physical is None or not catalog.holds(physical):
            return False  # as Qdrant answers the deletion of a collection that does not exist
        store = collections.store(physical)
        if collections.synced(name) or collections.synced(physical):
            # vecsync writes it: made again at once, empty; replaying stage 2 refills it (docs/operations.md).
            store.recreate()
            log.warning("Qdrant collection %r was deleted through the REST API and made again, empty", physical)
        else:
            # With the aliases that serve it, as a Qdrant server deletes them.
            catalog.change_aliases(lambda aliases: {alias: to for alias, to in aliases.items() if to != physical})
            catalog.drop(physical)
            log.warning("Qdrant collection %r was deleted through the REST API", physical)
        return True

    @route("/aliases", ["GET"])
    def list_aliases(body: Any) -> Any:
        return {"aliases": _aliases(catalog)}

    @route("/collections/{name}/aliases", ["GET"])
    def collection_aliases(body: Any, name: str) -> Any:
        physical = collections.physical(name)
        return {"aliases": [alias for alias in _aliases(catalog) if alias["collection_name"] == physical]}

    # Points: reads --------------------------------------------------------------------------------------------

    @route("/collections/{name}/points", ["POST"])
    def retrieve(body: Any, name: str) -> Any:
        request = _object(body)
        ids = convert.point_ids(request.get("ids"))
        with collections.engine(name, "retrieve points") as shard:
            found = shard.retrieve(
                ids,
                convert.payload_selector(request.get("with_payload", True)),
                convert.vector_selector(request.get("with_vector", False)),
            )
        return [convert.record(point) for point in found]

    @route("/collections/{name}/points/{point_id}", ["GET"])
    def retrieve_one(body: Any, name: str, point_id: str) -> Any:
        ids = convert.point_ids([int(point_id) if point_id.isdigit() else point_id])
        with collections.engine(name, "retrieve a point") as shard:
            found = shard.retrieve(ids, True, True)
        if not found:
            raise Refusal(404, f"Not found: No point with id {point_id} found")
        return convert.record(found[0])

    @route("/collections/{name}/points", ["GET"])
    def list_points(body: Any, name: str) -> Any:
        collections.physical(name)
        # Qdrant has no such route (its points are read with POST: retrieve, scroll, count); it answers 404.
        raise Refusal(
            404,
            "Not found: Qdrant reads points with POST /collections/{name}/points/scroll (pages of points), "
            "/points/count (their number) or /points (by id)",
        )

    @route("/collections/{name}/points/scroll", ["POST"])
    def scroll(body: Any, name: str) -> Any:
        request = convert.scroll_request(_object(body))
        with collections.engine(name, "scroll points") as shard:
            points, next_offset = shard.scroll(request)
        return {
            "points": [convert.record(point) for point in points],
            "next_page_offset": convert.json_point_id(next_offset),
        }

    @route("/collections/{name}/points/count", ["POST"])
    def count(body: Any, name: str) -> Any:
        request = convert.count_request(_object(body))
        with collections.engine(name, "count points") as shard:
            return {"count": shard.count(request)}

    @route("/collections/{name}/points/search", ["POST"])
    def search(body: Any, name: str) -> Any:
        request = convert.search_request(_object(body))
        with collections.engine(name, "search") as shard:
            return [convert.scored_point(point) for point in shard.query(request)]

    @route("/collections/{name}/points/search/batch", ["POST"])
    def search_batch(body: Any, name: str) -> Any:
        searches = _object(body).get("searches")
        if not isinstance(searches, list):
            raise BadRequest("'searches' must be a list of search requests")
        requests = [convert.search_request(_object(each)) for each in searches]
        with collections.engine(name, "search") as shard:
            return [[convert.scored_point(point) for point in shard.query(request)] for request in requests]

    @route("/collections/{name}/points/query", ["POST"])
    def query(body: Any, name: str) -> Any:
        with collections.engine(name, "query") as shard:
            request = convert.query_request(_object(body), shard)
            return {"points": [convert.scored_point(point) for point in shard.query(request)]}

    @route("/collections/{name}/points/query/batch", ["POST"])
    def query_batch(body: Any, name: str) -> Any:
        searches = _object(body).get("searches")
        if not isinstance(searches, list):
            raise BadRequest("'searches' must be a list of query requests")
        with collections.engine(name, "query") as shard:
            requests = [convert.query_request(_object(each), shard) for each in searches]
            return [{"points": [convert.scored_point(p) for p in shard.query(request)]} for request in requests]

    @route("/collections/{name}/points/query/groups", ["POST"])
    def query_groups(body: Any, name: str) -> Any:
        with collections.engine(name, "query groups") as shard:
            return convert.query_groups(_object(body), shard)

    # Points and collections: writes (upserter.qdrant_rest.writes; only where Collections.may_write allows) -----

    writes.register(route, collections)

    # End of points and collections: writes -------------------------------------------------------------------

    # Everything else: Qdrant's error shape, naming what is not served --------------------------------------------

    async def not_served(request: Request, path: str) -> Response:
        return _error(501, _not_served(request, "this route"), time.perf_counter())

    app.add_api_route("/{path:path}", not_served, methods=METHODS)
    return app


class _Raw(dict[str, Any]):
    """A reply sent as it is, not wrapped in ``result`` (Qdrant's GET / answers its title and version so)."""


def _reply(result: Any, started: float) -> Response:
    if isinstance(result, _Raw):
        return JSONResponse(dict(result))
    return JSONResponse({"result": result, "status": "ok", "time": time.perf_counter() - started})


def _error(status: int, message: str, started: float) -> Response:
    return JSONResponse({"status": {"error": message}, "time": time.perf_counter() - started}, status_code=status)


def _not_served(request: Request, what: str) -> str:
    return (
        f"Not implemented: {request.method} {request.url.path}: {what} is not served by vecsync's embedded Qdrant, "
        "which serves the reads of Qdrant's REST API that clients use (docs/operations.md)"
    )


async def _probe() -> Response:
    return Response("healthz check passed", media_type="text/plain")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _aliases(catalog: EmbeddedCatalog) -> list[dict[str, str]]:
    return [{"alias_name": alias, "collection_name": target} for alias, target in sorted(catalog.aliases().items())]


def _access(request: Request, keys: RestKeys) -> str:
    """``read-write`` or ``read-only``: what the request's key allows; Refusal where it allows nothing."""
    if not keys.any:
        client = request.client.host if request.client is not None else ""
        if client not in LOOPBACK:
            raise Refusal(403, "Forbidden: without QDRANT_API_KEY, only clients on the upserter's host are served")
        return "read-write"
    given = request.headers.get("api-key")
    if given is None:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None:
        raise Refusal(401, "Unauthorized: Must provide an API key or an Authorization bearer token")
    if keys.read_write is not None and hmac.compare_digest(given.encode(), keys.read_write.encode()):
        return "read-write"
    if keys.read_only is not None and hmac.compare_digest(given.encode(), keys.read_only.encode()):
        return "read-only"
    raise Refusal(401, "Unauthorized: Invalid API key or JWT")
