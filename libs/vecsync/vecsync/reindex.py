"""A model change without downtime: the records in Redis that every stage reads and writes about it.

A sync's Qdrant collection name (``QDRANT_COLLECTION``, a sync's ``qdrant_collection``) is an alias of a physical
collection. Two hashes per name say what it serves and what is being built beside it (docs/design.md, "Changing
the embedding model"):

``vecsync:collection:<name>``  the physical collection the name serves, with its model and size::

    collection=<physical>  model=<model id>  dim=<size>

``vecsync:reindex:<name>``  the newest model change of the name, once one was started::

    number=<n>  phase=building|switched|aborted|failed  model  dim  collection=<physical being built>
    from_collection  from_model  from_dim  started_at  progress_at  finished_at  embedded  error
    total:<sync>  snapshot_last:<sync>  snapshot_published:<sync>   (the producer's snapshot of each sync)
    watermark:<sync>=<JSON {stream: last stage 1 id}>               (set once that sync's snapshot is published)
    stage2_watermark:<sync>=<JSON {stream: last stage 2 id}>        (set once stage 1 has handled the watermark)

Who writes what: the upserter (the one process that holds the embedded store) records what a name serves, starts a
change when its sync's EMBEDDING_MODEL names another model than the served one, switches the alias once the build
has caught up, and drops collections; the producer publishes each sync's snapshot into stage 1 marked for the
collection being built; the embedder-worker embeds every live change for the served collection and, while a build
runs, for the new one too, and counts the snapshot's documents it embedded. Every key is a hash of its own, read
and written one key at a time, so all of it works on a Redis Cluster as on one Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

SERVING_PREFIX = "vecsync:collection:"
REINDEX_PREFIX = "vecsync:reindex:"
# The number of the next physical collection of a name: INCR, so that two builds never share a collection.
NUMBER_SUFFIX = ":number"
# Set by `vecsync reindex --drop-old`; the upserter drops the collections the name no longer serves and deletes it.
DROP_OLD_SUFFIX = ":drop_old"


class Phase(StrEnum):
    """Where a model change is: building the new collection, done (switched), or ended without a switch."""

    BUILDING = "building"
    SWITCHED = "switched"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(frozen=True)
class Target:
    """A physical collection as the stages write it: its name, the model whose vectors it holds, and their size."""

    collection: str
    model: str | None
    dim: int | None


@dataclass(frozen=True)
class Serving(Target):
    """The physical collection that the name ``alias`` serves now."""

    alias: str = ""


@dataclass(frozen=True)
class Reindex:
    """The newest model change of the name ``alias``, as its hash holds it (see the module's docstring)."""

    alias: str
    number: int
    phase: Phase
    model: str
    dim: int
    collection: str
    from_collection: str
    from_model: str | None
    started_at: float
    progress_at: float
    finished_at: float | None
    embedded: int
    error: str | None
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def building(self) -> bool:
        return self.phase is Phase.BUILDING

    @property
    def target(self) -> Target:
        """The collection being built, as the stages write it."""
        return Target(self.collection, self.model, self.dim)

    @property
    def total(self) -> int:
        """The documents of every sync's snapshot (counted as each snapshot began)."""
        return sum(int(value) for name, value in self.fields.items() if name.startswith("total:"))

    def watermark(self, sync: str) -> dict[str, str] | None:
        """The last stage 1 id of each stream once ``sync``'s snapshot is published; None before."""
        return _json_or_none(self.fields.get(f"watermark:{sync}"))

    def stage2_watermark(self, sync: str) -> dict[str, str] | None:
        """The last stage 2 id of each stream, recorded once stage 1 had handled ``sync``'s snapshot."""
        return _json_or_none(self.fields.get(f"stage2_watermark:{sync}"))

    def snapshot_position(self, sync: str) -> tuple[str | None, int]:
        """The last _id (Extended JSON) that ``sync``'s snapshot published, and how many documents it published."""
        return self.fields.get(f"snapshot_last:{sync}") or None, int(self.fields.get(f"snapshot_published:{sync}", 0))


def serving_key(alias: str) -> str:
    return SERVING_PREFIX + alias


def reindex_key(alias: str) -> str:
    return REINDEX_PREFIX + alias


def physical_name(alias: str, number: int) -> str:
    """The physical collection of the ``number``-th build of ``alias``: ``documents-v2``."""
    return f"{alias}-v{number}"


def read_serving(client: redis.Redis, alias: str) -> Serving | None:
    return _serving(alias, client.hgetall(serving_key(alias)))


def read_reindex(client: redis.Redis, alias: str) -> Reindex | None:
    return _reindex(alias, client.hgetall(reindex_key(alias)))


def read_state(client: redis.Redis, alias: str) -> tuple[Serving | None, Reindex | None]:
    """What ``alias`` serves and its newest model change, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(serving_key(alias))
    pipe.hgetall(reindex_key(alias))
    serving, reindex = pipe.execute()
    return _serving(alias, serving), _reindex(alias, reindex)


def write_serving(client: redis.Redis | redis.client.Pipeline, serving: Serving) -> None:
    mapping = {"collection": serving.collection, "model": serving.model or "", "dim": serving.dim or ""}
    client.hset(serving_key(serving.alias), mapping=mapping)


def start(client: redis.Redis, alias: str, *, model: str, dim: int, serving: Serving) -> Reindex:
    """Record a new model change of ``alias`` to ``model`` (vectors of ``dim``), building a new physical collection
    beside ``serving``; returns it. The caller creates the collection before the stages are told (phase building)."""
    number = int(client.incr(reindex_key(alias) + NUMBER_SUFFIX))
    now = time.time()
    mapping: dict[str, Any] = {
        "number": number,
        "phase": Phase.BUILDING.value,
        "model": model,
        "dim": dim,
        "collection": physical_name(alias, number),
        "from_collection": serving.collection,
        "from_model": serving.model or "",
        "from_dim": serving.dim or "",
        "started_at": now,
        "progress_at": now,
        "embedded": 0,
    }
    pipe = client.pipeline(transaction=True)
    pipe.delete(reindex_key(alias))
    pipe.hset(reindex_key(alias), mapping=mapping)
    pipe.execute()
    started = read_reindex(client, alias)
    assert started is not None
    return started


def end(client: redis.Redis, alias: str, number: int, phase: Phase, error: str | None = None) -> bool:
    """Move change ``number`` of ``alias`` from building to ``phase``; False if it is not building (any more)."""
    key = reindex_key(alias)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            current = pipe.hmget(key, ["number", "phase"])
            if current != [str(number), Phase.BUILDING.value]:
                pipe.reset()
                return False
            pipe.multi()
            pipe.hset(key, mapping={"phase": phase.value, "finished_at": time.time(), "error": error or ""})
            pipe.execute()
        except redis.WatchError:
            return False
    return True


def record_progress(client: redis.Redis | redis.client.Pipeline, alias: str, embedded: int) -> None:
    """Count ``embedded`` more documents of the snapshot embedded for the new collection."""
    client.hincrby(reindex_key(alias), "embedded", embedded)
    client.hset(reindex_key(alias), "progress_at", time.time())


def record_fields(client: redis.Redis | redis.client.Pipeline, alias: str, fields: Mapping[str, Any]) -> None:
    client.hset(reindex_key(alias), mapping=dict(fields))


def request_drop_old(client: redis.Redis, alias: str) -> None:
    client.set(reindex_key(alias) + DROP_OLD_SUFFIX, time.time())


def drop_old_requested(client: redis.Redis, alias: str) -> bool:
    return bool(client.exists(reindex_key(alias) + DROP_OLD_SUFFIX))


def clear_drop_old(client: redis.Redis, alias: str) -> None:
    client.delete(reindex_key(alias) + DROP_OLD_SUFFIX)


def _serving(alias: str, fields: Mapping[str, str]) -> Serving | None:
    if not fields.get("collection"):
        return None
    dim = fields.get("dim") or ""
    return Serving(fields["collection"], fields.get("model") or None, int(dim) if dim.isdigit() else None, alias)


def _reindex(alias: str, fields: Mapping[str, str]) -> Reindex | None:
    if not fields.get("number") or not fields.get("collection"):
        return None
    finished = fields.get("finished_at") or ""
    return Reindex(
        alias=alias,
        number=int(fields["number"]),
        phase=Phase(fields.get("phase", Phase.BUILDING.value)),
        model=fields.get("model", ""),
        dim=int(fields.get("dim") or 0),
        collection=fields["collection"],
        from_collection=fields.get("from_collection", ""),
        from_model=fields.get("from_model") or None,
        started_at=float(fields.get("started_at") or 0),
        progress_at=float(fields.get("progress_at") or fields.get("started_at") or 0),
        finished_at=float(finished) if finished else None,
        embedded=int(fields.get("embedded") or 0),
        error=fields.get("error") or None,
        fields=dict(fields),
    )


def _json_or_none(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    value = json.loads(text)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None
