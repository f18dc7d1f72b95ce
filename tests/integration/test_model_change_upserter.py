"""The upserter's part of a model change (issue 25): each entry into the collection it names, the start of a build,
the switch once both stages handled the snapshot's watermarks, abort and drop-old.

Real Redis and the embedded store; stage 2 entries are written by hand as the embedder-worker writes them, and the
snapshot's watermark as the producer records it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.pipeline import FAST
from upserter.model_change import ModelChange
from upserter.named_collections import CollectionSpec, NamedCollections
from upserter.service import Upserter
from upserter.settings import UpserterSettings
from vecsync import reindex
from vecsync.constants import STAGE1_GROUP, STAGE1_STREAM, STAGE2_GROUP, STAGE2_STREAM
from vecsync.consumer import StreamConsumer
from vecsync.documents import point_id, text_sha256
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.reindex import Phase
from vecsync.store.embedded_catalog import EmbeddedCatalog
from vecsync.syncs import default_sync

OLD, NEW = "model-old", "model-new"


class World:
    """An upserter's collections, its coordinator and its consumer, over one Redis and one embedded folder."""

    def __init__(self, client: redis.Redis, redis_url: str, mongo_uri: str, collection: Any, folder: Path) -> None:
        self.client = client
        self.settings = UpserterSettings(
            redis_url=redis_url,
            consumer_name="upserter-1",
            qdrant_path=folder,
            data_dir=folder,
            mongo_uri=mongo_uri,
            mongo_database=collection.database.name,
            mongo_collection=collection.name,
            embedding_dim=3,
            embedding_model=NEW,
            **FAST,
        )
        self.source = f"{collection.database.name}.{collection.name}"
        self.mongo = collection
        self.sync = default_sync(self.settings)
        self.names = NamedCollections(EmbeddedCatalog(folder), {"documents": CollectionSpec((), None)}, 3)
        self.change = ModelChange(
            self.names,
            [self.sync],
            client,
            self.settings.partitions,
            stage1_group=STAGE1_GROUP,
            stage2_group=STAGE2_GROUP,
            holder="upserter-1",
        )

    def drain(self) -> None:
        store = self.names.store("documents", self.names.serving_collection("documents"))
        handler = Upserter(self.settings, self.client, store, self.mongo, names=self.names).handle
        StreamConsumer(
            self.client,
            stage="upserter",
            stream=STAGE2_STREAM,
            group=STAGE2_GROUP,
            handler=handler,
            settings=self.settings,
        ).run(drain=True)

    def entry(self, mongo_id: str, text: str, model: str, dim: int, collection: str | None, version: str) -> None:
        payload = {"mongo_id": mongo_id, "source": self.source, "text": text, "text_sha256": text_sha256(text)}
        vector = [1.0] + [0.0] * (dim - 1)
        document = EmbeddedDocument(
            "upsert", self.source, mongo_id, 0.0, version, vector, payload | {"model": model}, collection=collection
        )
        self.client.xadd(STAGE2_STREAM, document.to_fields())

    def stage1_change(self, mongo_id: str) -> str:
        """A stage 1 entry, read and acknowledged by the embedder-workers' group, as after a snapshot."""
        change = DocumentChange("upsert", self.source, mongo_id, 0.0, {"_id": mongo_id, "subject": "x"})
        entry_id = str(self.client.xadd(STAGE1_STREAM, change.to_fields()))
        try:
            self.client.xgroup_create(STAGE1_STREAM, STAGE1_GROUP, id="0")
        except redis.ResponseError:
            pass
        for _stream, entries in self.client.xreadgroup(STAGE1_GROUP, "embedder-1", {STAGE1_STREAM: ">"}):
            self.client.xack(STAGE1_STREAM, STAGE1_GROUP, *[entry for entry, _fields in entries])
        return entry_id

    def payload(self, physical: str, mongo_id: str) -> dict[str, Any] | None:
        pid = point_id(self.source, mongo_id)
        return self.names.store("documents", physical).payloads([pid]).get(pid)


@pytest.fixture
def world(
    redis_client: redis.Redis, redis_url: str, mongo_uri: str, mongo_collection: Any, tmp_path: Path
) -> Iterator[World]:
    made = World(redis_client, redis_url, mongo_uri, mongo_collection, tmp_path / "qdrant")
    yield made
    made.names.close()


def built_with_the_old_model(world: World) -> None:
    """A collection made before aliases, of the old model's 4 dimensions, that the name serves as it is."""
    world.names.catalog.open("documents", dim=4)
    world.entry("a", "a text", OLD, 4, None, "1-0")
    world.drain()
    world.change.record_serving()


def test_a_collection_made_before_aliases_is_adopted_with_the_model_of_its_points(world: World) -> None:
    built_with_the_old_model(world)
    serving = reindex.read_serving(world.client, "documents")
    assert serving == reindex.Serving("documents", OLD, 4, "documents")


def test_another_configured_model_starts_a_build_beside_the_served_collection(world: World) -> None:
    built_with_the_old_model(world)
    world.change.check("documents")
    change = reindex.read_reindex(world.client, "documents")
    assert change is not None and change.phase is Phase.BUILDING
    assert (change.collection, change.model, change.dim, change.from_collection) == (
        "documents-v1",
        NEW,
        3,
        "documents",
    )
    assert world.names.catalog.open("documents-v1", dim=None).dim == 3
    world.change.check("documents")  # no second build while one builds
    assert reindex.read_reindex(world.client, "documents").number == change.number  # type: ignore[union-attr]


def test_each_entry_goes_to_the_collection_it_names_and_a_retired_one_nowhere(world: World) -> None:
    built_with_the_old_model(world)
    world.change.check("documents")
    world.entry("b", "live, old model", OLD, 4, "documents", "2-0")
    world.entry("b", "live, new model", NEW, 3, "documents-v1", "2-0")
    world.entry("c", "an aborted build's", NEW, 3, "documents-v9", "3-0")
    world.drain()
    assert (world.payload("documents", "b") or {})["text"] == "live, old model"
    assert (world.payload("documents-v1", "b") or {})["text"] == "live, new model"
    assert world.payload("documents", "c") is None and world.payload("documents-v1", "c") is None
    assert "documents-v9" not in world.names.catalog.collections()
    assert world.client.xpending(STAGE2_STREAM, STAGE2_GROUP)["pending"] == 0
    assert world.client.xlen(STAGE2_STREAM + ":dlq") == 0


def test_the_name_switches_once_both_stages_handled_the_snapshot(world: World) -> None:
    built_with_the_old_model(world)
    world.change.check("documents")
    snapshot = world.stage1_change("a")
    world.entry("a", "a text", NEW, 3, "documents-v1", snapshot)
    world.change.check("documents")
    assert reindex.read_serving(world.client, "documents").collection == "documents"  # type: ignore[union-attr]
    reindex.record_fields(world.client, "documents", {"watermark:default": json.dumps({STAGE1_STREAM: snapshot})})
    world.change.check("documents")  # stage 1 handled; stage 2 still holds the snapshot's entry unapplied
    assert world.names.catalog.resolve("documents") == "documents"
    world.drain()
    world.change.check("documents")
    assert world.names.catalog.resolve("documents") == "documents-v1"
    assert reindex.read_serving(world.client, "documents") == reindex.Serving("documents-v1", NEW, 3, "documents")
    change = reindex.read_reindex(world.client, "documents")
    assert change is not None and change.phase is Phase.SWITCHED
    # Afterwards: entries for the old collection are dropped, the old collection is kept.
    world.entry("a", "late for the old one", OLD, 4, "documents", "9-0")
    world.drain()
    assert (world.payload("documents", "a") or {})["text"] == "a text"
    # An entry naming no collection, of the old model, goes back to be embedded by the new one.
    original = world.stage1_change("z")
    world.entry("z", "from before the upgrade", OLD, 4, None, original)
    world.drain()
    assert world.payload("documents-v1", "z") is None
    resent = [DocumentChange.from_fields(fields) for _id, fields in world.client.xrange(STAGE1_STREAM)]
    assert any(change.mongo_id == "z" and change.force_embed and change.version == original for change in resent)
    # drop-old removes what the name no longer serves.
    reindex.request_drop_old(world.client, "documents")
    world.change.check("documents")
    assert world.names.catalog.collections() == ["documents-v1"]
    assert not reindex.drop_old_requested(world.client, "documents")


def test_an_aborted_build_is_dropped_and_not_started_again_by_itself(world: World) -> None:
    built_with_the_old_model(world)
    world.change.check("documents")
    change = reindex.read_reindex(world.client, "documents")
    assert change is not None
    assert reindex.end(world.client, "documents", change.number, Phase.ABORTED)
    world.change.check("documents")
    assert world.names.catalog.collections() == ["documents"]
    ended = reindex.read_reindex(world.client, "documents")
    assert ended is not None and json.loads(ended.fields["dropped"]) == ["documents-v1"]
    world.change.check("documents")
    assert reindex.read_reindex(world.client, "documents").phase is Phase.ABORTED  # type: ignore[union-attr]
    assert (world.payload("documents", "a") or {})["text"] == "a text", "the served collection is untouched"


def test_a_crash_between_the_switch_and_its_record_is_found_at_the_next_start(world: World) -> None:
    built_with_the_old_model(world)
    world.change.check("documents")
    world.names.catalog.switch("documents", "documents-v1")  # the process died here
    world.change.record_serving()
    assert reindex.read_serving(world.client, "documents") == reindex.Serving("documents-v1", NEW, 3, "documents")
    assert reindex.read_reindex(world.client, "documents").phase is Phase.SWITCHED  # type: ignore[union-attr]


def test_nothing_starts_without_a_configured_model(world: World, mongo_collection: Any) -> None:
    world.settings = world.settings.model_copy(update={"embedding_model": None})
    world.change.syncs_of = {"documents": [default_sync(world.settings)]}
    built_with_the_old_model(world)
    world.change.check("documents")
    assert reindex.read_reindex(world.client, "documents") is None
