"""How the CLI reaches the Qdrant collection: directly, or through the upserter that holds an embedded store.

``open_store`` opens the collection the settings name; with the settings of one sync (vecsync.syncs.settings_for),
that sync's Qdrant collection, with its payload indexes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import redis
import requests

from vecsync import reindex
from vecsync.cli.settings import CliSettings
from vecsync.errors import CheckNotRun, ConfigurationError, PermanentError, TransientError
from vecsync.redaction import redact_url
from vecsync.reindex import Serving
from vecsync.search_modes import SearchMode
from vecsync.store import open_vector_store
from vecsync.syncs import sync_of
from vecsync.vectorstore import Hit, NoSparseVectors, StoreInUse, store_key_file


class Store(Protocol):
    """The collection operations the CLI uses; VectorStore and UpserterStore both provide them."""

    collection: str

    def sparse_vector(self) -> str | None: ...

    def search(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]: ...

    def search_documents(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]: ...

    def count(self) -> int: ...

    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]: ...

    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]: ...

    def recreate(self) -> None: ...

    def close(self) -> None: ...


class UpserterStore:
    """The collection operations over the upserter's HTTP port (see upserter.store_api).

    Each request carries the upserter's key: ``api_key``, or else the content of ``key_file``, read at every
    request so that a restarted upserter's new key is picked up; and names ``collection``, of the collections the
    upserter holds (an empty one names none: the upserter answers for its first).
    """

    def __init__(
        self,
        base_url: str,
        collection: str,
        timeout_s: float,
        *,
        api_key: str | None = None,
        key_file: Path | None = None,
        physical: str | None = None,
    ) -> None:
        """``physical``: a physical collection of the name ``collection`` to answer from (see upserter.store_api);
        None: the one the name serves."""
        self.base_url = base_url.rstrip("/")
        self.collection = collection
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.key_file = key_file
        self.physical = physical

    def of_physical(self, physical: str) -> UpserterStore:
        """This store, answering from the physical collection ``physical`` of its name."""
        return UpserterStore(
            self.base_url,
            self.collection,
            self.timeout_s,
            api_key=self.api_key,
            key_file=self.key_file,
            physical=physical,
        )

    def sparse_vector(self) -> str | None:
        name = self._post("/collection", {}).get("sparse_vector")
        return name if isinstance(name, str) else None

    def search(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        return self._search(vector, text, limit=limit, match=match, chunks=True)

    def search_documents(
        self,
        vector: list[float] | None,
        *,
        limit: int,
        match: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        return self._search(vector, text, limit=limit, match=match, chunks=False)

    def _search(
        self, vector: list[float] | None, text: str | None, *, limit: int, match: Mapping[str, Any] | None, chunks: bool
    ) -> list[Hit]:
        mode = SearchMode.of(vector, text)
        request = {"mode": mode.value, "vector": vector, "text": text, "limit": limit, "match": dict(match or {})}
        body = self._post("/search", request | {"chunks": chunks})
        if body.get("mode", mode.value) != mode.value:  # searched dense instead: the collection has no sparse vectors
            raise NoSparseVectors(f"Qdrant collection {self.collection!r}: {body.get('note', 'no sparse vectors')}.")
        return [Hit(hit["id"], hit["score"], hit["payload"]) for hit in body["hits"]]

    def count(self) -> int:
        return int(self._post("/count", {})["count"])

    def payloads(self, point_ids: list[str], fields: list[str] | None = None) -> dict[str, dict[str, Any]]:
        return dict(self._post("/payloads", {"ids": point_ids, "fields": fields})["payloads"])

    def scroll(
        self, *, limit: int, offset: str | None, fields: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        body = self._post("/scroll", {"limit": limit, "offset": offset, "fields": fields})
        return dict(body["payloads"]), body["next_offset"]

    def recreate(self) -> None:
        self._post("/recreate", {})

    def close(self) -> None:
        pass

    def _key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.key_file is not None:
            try:
                return self.key_file.read_text().strip() or None
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ConfigurationError(
                    f"Could not read the upserter's key in {self.key_file}: {exc}. Run the CLI as the user that "
                    "runs the upserter, or set UPSERTER_API_KEY."
                ) from None
        return None

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        if self.collection:
            body = {**body, "collection": self.collection}
        if self.physical:
            body = {**body, "physical": self.physical}
        key = self._key()
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = requests.post(self.base_url + path, json=body, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TransientError(f"could not reach the upserter at {redact_url(self.base_url)}: {exc}") from exc
        if response.status_code == 401:
            where = f"; {self.key_file} holds none" if key is None and self.key_file else ""
            raise ConfigurationError(
                f"The upserter at {redact_url(self.base_url)} refused the CLI's key{where}. Set UPSERTER_API_KEY to "
                "the upserter's key, or run the CLI with the upserter's DATA_DIR, where it writes its key."
            )
        if response.status_code == 409:
            raise CollectionSwitched(f"the upserter answered 409 to {path}: {response.text[:300]}")
        if response.status_code != 200:
            raise PermanentError(f"the upserter answered {response.status_code} to {path}: {response.text[:300]}")
        return response.json()


def open_store(settings: CliSettings) -> Store:
    """A server's collection directly; an embedded one through its upserter, or directly when none runs."""
    sync = sync_of(settings)
    payload_indexes, sparse_model = sync.indexed_payload(), sync.sparse_model
    if settings.qdrant_url:
        return open_vector_store(
            settings, settings.data_dir, payload_indexes=payload_indexes, sparse_model=sparse_model
        )
    remote = UpserterStore(
        settings.upserter_url,
        settings.qdrant_collection,
        settings.http_timeout_s,
        api_key=settings.upserter_api_key,
        key_file=store_key_file(settings.data_dir),
    )
    try:
        remote.count()
        return remote
    except TransientError:
        pass
    try:
        store = open_vector_store(
            settings, settings.data_dir, payload_indexes=payload_indexes, sparse_model=sparse_model
        )
    except StoreInUse as exc:
        raise ConfigurationError(
            f"{exc} No upserter answered at UPSERTER_URL={redact_url(settings.upserter_url)} either: point "
            "UPSERTER_URL at the upserter that holds the store."
        ) from None
    store.ensure_collection()
    return store


class CollectionSwitched(TransientError):
    """Raised when the physical collection a search embedded its query for is gone: the name serves another."""


def store_of_physical(store: Store, settings: CliSettings, physical: str) -> Store:
    """A store of the physical collection ``physical`` of the name ``store`` is for: ``store`` itself where it is
    that collection; else through the same upserter, or opened on the server directly."""
    if isinstance(store, UpserterStore):
        return store.of_physical(physical)
    if store.collection == physical:
        return store
    sync = sync_of(settings)
    return open_vector_store(
        settings.model_copy(update={"qdrant_collection": physical}),
        settings.data_dir,
        payload_indexes=sync.indexed_payload(),
        sparse_model=sync.sparse_model,
    )


def served(ctx_redis: redis.Redis, settings: CliSettings) -> Serving | None:
    """What the sync's collection name serves now, as the upserter recorded it (vecsync.reindex); None where nothing
    is recorded (an upserter of an earlier release) or Redis cannot say."""
    try:
        return reindex.read_serving(ctx_redis, settings.qdrant_collection)
    except redis.RedisError:
        return None


def served_model(ctx: HasRedis) -> str | None:
    """The model of the collection the sync's name serves, where recorded."""
    serving = served(ctx.redis, ctx.settings)
    return serving.model if serving is not None else None


class HasRedis(Protocol):
    settings: CliSettings

    @property
    def redis(self) -> redis.Redis: ...


def embed_query(settings: CliSettings, text: str, model: str | None = None) -> list[float]:
    """The query's embedding by ``model`` (the embedding-api's default when None)."""
    url = settings.embedding_url.rstrip("/") + "/encode"
    try:
        headers = {"Authorization": f"Bearer {settings.embedding_api_key}"} if settings.embedding_api_key else {}
        body = {"text": text} | ({"model": model} if model else {})
        response = requests.post(url, json=body, headers=headers, timeout=settings.http_timeout_s)
    except requests.RequestException as exc:
        where = redact_url(settings.embedding_url)
        raise TransientError(f"could not reach the embedding-api at {where}: {exc}") from exc
    if response.status_code != 200:
        raise PermanentError(f"the embedding-api answered {response.status_code}: {response.text[:300]}")
    return list(response.json()["embedding"])


# How often wait_for_model asks again while the embedding-api loads its model.
READY_POLL_S = 1.0


def wait_for_model(settings: CliSettings, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> str:
    """The model the embedding-api runs, once it is ready; CheckNotRun when that is not known within ``timeout_s``.

    vecsync's embedding-api opens its port before it has loaded its model, and answers /readyz with 503 meanwhile;
    an OpenAI-compatible server without /readyz is asked GET /v1/models, which must name exactly one model.
    ``on_wait`` is told once why the wait goes on.
    """
    base, where = settings.embedding_url.rstrip("/"), redact_url(settings.embedding_url)
    headers = {"Authorization": f"Bearer {settings.embedding_api_key}"} if settings.embedding_api_key else {}
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            # No single request may outlast the wait by much.
            timeout = min(settings.http_timeout_s, max(deadline - time.monotonic(), 1.0))
            response = requests.get(base + "/readyz", headers=headers, timeout=timeout)
            body = _json_object(response)
            if response.status_code == 200 and isinstance(body.get("model"), str):
                return str(body["model"])
            if response.status_code in (200, 404):  # another server's /readyz, or none: it may list its model
                return _only_model(settings, base, headers)
            if response.status_code != 503:
                raise CheckNotRun(
                    f"The embedding-api at {where} answered {response.status_code} to GET /readyz "
                    f"({response.text[:200]!r}), so points cannot be checked for vectors of another model. Check "
                    "EMBEDDING_URL (and EMBEDDING_API_KEY), or run the command with --skip-model-check."
                )
            if body.get("status") == "failed":
                raise CheckNotRun(
                    f"The embedding-api at {where} could not load its model "
                    f"({body.get('detail', 'no detail given')}), so points cannot be checked for vectors of another "
                    "model. Fix the embedding-api (see its log) and run the command again."
                )
            waiting = ("is still loading its model (/readyz answered 503)", "Wait until its /readyz answers 200")
        except requests.RequestException as exc:
            waiting = (f"could not be reached ({exc})", "Check EMBEDDING_URL and that the embedding-api runs")
        left = deadline - time.monotonic()
        if left <= 0:
            raise CheckNotRun(
                f"The embedding-api at {where} {waiting[0]} after {timeout_s:g} s, so points cannot "
                f"be checked for vectors of another model. {waiting[1]}, or give it longer with --ready-timeout; "
                "--skip-model-check runs the command without that check."
            )
        if on_wait is not None and not told:
            on_wait(f"The embedding-api at {where} {waiting[0]}; waiting up to {timeout_s:g} s.")
            told = True
        time.sleep(min(READY_POLL_S, left))


def _only_model(settings: CliSettings, base: str, headers: dict[str, str]) -> str:
    where = redact_url(settings.embedding_url)
    try:
        response = requests.get(base + "/v1/models", headers=headers, timeout=settings.http_timeout_s)
        models = _json_object(response).get("data") if response.status_code == 200 else None
    except requests.RequestException as exc:
        raise CheckNotRun(
            f"Could not ask the embedding-api at {where} which model it runs ({exc}). Check "
            "EMBEDDING_URL, or run the command with --skip-model-check."
        ) from None
    names = [m.get("id") for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    if len(names) == 1 and isinstance(names[0], str):
        return names[0]
    raise CheckNotRun(
        f"The embedding server at {where} names no model in a /readyz, and GET /v1/models named "
        f"{len(names)} models (answered {response.status_code}), not one, so points cannot be checked for vectors "
        "of another model. Run the command with --skip-model-check."
    )


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
