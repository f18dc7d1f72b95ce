"""No stale overwrite: the version fence lives with the points it guards, deletes leave tombstones in Redis.

Real Redis and the upserter's own classes, on both implementations of the store: Qdrant's engine embedded, and
the implementation for a Qdrant server on qdrant-client's in-memory mode, which stands in for a Qdrant server (no
server binary runs here), and on Qdrant's engine over HTTP, against the upserter's Qdrant REST API (``rest``).
Two upserters are two Upserter objects sharing one Redis and one collection.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.pipeline import FAST, Pipeline
from tests.support.stores import ALL_KINDS, make_store
from vecsync.constants import APPLIED_TEXT_KEY, STAGE2_GROUP, STAGE2_STREAM, tombstones_key
from vecsync.documents import point_id, text_fingerprint, text_sha256
from vecsync.messages import EmbeddedDocument
from vecsync.retention import trim
from vecsync.vectorstore import VectorStore

SOURCE = "app.documents"
WAIT_S = 30.0  # a bound on waiting for another thread, never a timed assertion


@pytest.fixture(params=ALL_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    store = make_store(request.param, tmp_path)
    yield store
    store.close()


def entry(mongo_id: str, version: str, text: str | None, *, model: str = "m1", op: str = "upsert") -> dict[str, str]:
    """A stage 2 entry; ``text=None`` is a delete."""
    if text is None:
        return EmbeddedDocument("delete", SOURCE, mongo_id, 1.0, version).to_fields()
    payload = {
        "mongo_id": mongo_id,
        "source": SOURCE,
        "text": text,
        "text_sha256": text_sha256(text),
        "version": version,
        "model": model,
    }
    vector = None if op == "payload" else [float(len(text)), 1.0] + [0.5] * 382
    return EmbeddedDocument(op, SOURCE, mongo_id, 1.0, version, vector, payload).to_fields()  # type: ignore[arg-type]


def snapshot(store: VectorStore) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Every point: payload and vector, by id."""
    ids: list[str] = []
    offset = None
    while True:
        page, offset = store.scroll(limit=256, offset=offset, fields=["mongo_id"])
        ids.extend(page)
        if offset is None:
            return {r.id: (r.payload, r.vector or []) for r in store.retrieve(ids, with_vectors=True)}


def reset_group_by_hand(client: redis.Redis) -> None:
    """The seed's runbook, typed into redis-cli: destroy the upserters' group, create it again from the first entry."""
    where = client.connection_pool.connection_kwargs
    cli = [shutil.which("redis-cli") or "redis-cli", "-h", where["host"], "-p", str(where["port"])]
    for command in (
        ["XGROUP", "DESTROY", STAGE2_STREAM, STAGE2_GROUP],
        ["XGROUP", "CREATE", STAGE2_STREAM, STAGE2_GROUP, "0"],
    ):
        answer = subprocess.run([*cli, *command], capture_output=True, text=True, check=True, timeout=30).stdout
        assert answer.strip() in ("1", "OK"), answer


def history(pipeline: Pipeline) -> None:
    """A document history with updates, a payload-only change and deletes, drained through every stage."""
    collection = pipeline.collection
    collection.insert_many([{"_id": f"d{i}", "subject": f"ticket {i}", "owner": "Ann"} for i in range(8)])
    pipeline.drain()
    collection.update_one({"_id": "d1"}, {"$set": {"subject": "ticket 1, edited"}})
    collection.update_one({"_id": "d2"}, {"$set": {"owner": "Bob"}})  # text unchanged: payload-only
    collection.delete_one({"_id": "d3"})
    collection.update_one({"_id": "d4"}, {"$set": {"subject": ""}})  # no text left: its point goes
    pipeline.drain()
    collection.insert_one({"_id": "d3", "subject": "ticket 3, back again"})
    collection.delete_one({"_id": "d5"})
    pipeline.drain()
    pipeline.assert_matches_mongo()


class TestRebuildByHand:
    """The seed's "Rebuild Qdrant from Scratch", and anyone who empties the collection behind the pipeline's back."""

    def test_a_deleted_collection_and_a_group_reset_bring_every_point_back(self, pipeline: Pipeline) -> None:
        history(pipeline)
        before = snapshot(pipeline.store)
        pipeline.store.drop()  # curl -X DELETE .../collections/documents, or rm -r of the embedded collection
        reset_group_by_hand(pipeline.redis_client)
        pipeline.store.ensure_collection()  # what a starting upserter does
        # Only the upserter runs: a payload-only change takes its vector from an upsert of the same batch.
        pipeline.upserter_consumer().run(drain=True)
        assert snapshot(pipeline.store) == before
        pipeline.assert_matches_mongo()
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 0

    def test_points_deleted_by_hand_come_back_and_the_others_stay_as_they_were(self, pipeline: Pipeline) -> None:
        history(pipeline)
        before = snapshot(pipeline.store)
        pipeline.store.delete([point_id(pipeline.source, mongo_id) for mongo_id in ("d0", "d1", "d2", "d3")])
        reset_group_by_hand(pipeline.redis_client)
        pipeline.upserter_consumer(batch_size=3).run(drain=True)  # entries of one point in several batches
        assert snapshot(pipeline.store) == before

    def test_an_emptied_collection_costs_no_lasting_embedding_skip(self, pipeline: Pipeline) -> None:
        """The skip-unchanged hint outlives the points; a payload-only change then gets its vector back."""
        history(pipeline)
        pipeline.store.recreate()
        pipeline.collection.update_one({"_id": "d0"}, {"$set": {"owner": "Cy"}})
        pipeline.drain()
        assert pipeline.points()["d0"]["owner"] == "Cy"

    def test_a_change_trimmed_from_stage1_is_embedded_again_from_mongodb(self, pipeline: Pipeline) -> None:
        """The payload-only entry needs a vector, and retention already trimmed its stage 1 entry: the upserter
        reads the document from MongoDB instead, as `vecsync dlq replay` does, rather than dead-lettering it."""
        history(pipeline)
        pipeline.store.recreate()
        pipeline.collection.update_one({"_id": "d0"}, {"$set": {"owner": "Cy"}})
        pipeline.run_producer()
        pipeline.collection.update_one({"_id": "d7"}, {"$set": {"subject": "ticket 7, edited"}})
        pipeline.run_producer()
        pipeline.embedder_consumer().run(drain=True)  # the hint says d0's text is unchanged: payload-only
        stage1 = pipeline.stage1_groups()[0][0]
        assert trim(pipeline.redis_client, stage1, keep_count=1, keep_age_s=0) > 0
        assert [fields["mongo_id"] for _id, fields in pipeline.redis_client.xrange(stage1)] == ["d7"]
        pipeline.drain()
        assert pipeline.redis_client.xlen(stage1 + ":dlq") == 0
        points = pipeline.points()  # the others' points went with the collection; only d0 and d7 changed since
        assert sorted(points) == ["d0", "d7"]
        assert points["d0"]["owner"] == "Cy" and points["d0"]["text"] == "ticket 0"


class TestTombstones:
    def test_a_tombstone_only_ever_grows(self, redis_client: redis.Redis) -> None:
        from upserter.tombstones import Tombstones

        tombstones = Tombstones(redis_client, tombstones_key("documents"))
        tombstones.record({"p": "9-0", "q": "5-9"})
        tombstones.record({"p": "10-0", "q": "5-10"})  # greater as numbers, smaller as strings
        assert tombstones.get(["p", "q", "r"]) == {"p": (10, 0), "q": (5, 10)}
        tombstones.record({"p": "9-99", "q": "5-1"})
        assert tombstones.get(["p", "q"]) == {"p": (10, 0), "q": (5, 10)}
        tombstones.record({"p": "10-1"})
        assert tombstones.get(["p"]) == {"p": (10, 1)}
        assert Tombstones(redis_client, tombstones_key("other")).get(["p"]) == {}, "tombstones are kept per collection"

    def test_a_late_older_upsert_stays_deleted_after_a_rebuild(self, pipeline: Pipeline) -> None:
        from tests.integration.test_cli import cli

        client = pipeline.redis_client
        client.xadd(STAGE2_STREAM, entry("d", "100-0", "first"))
        client.xadd(STAGE2_STREAM, entry("d", "300-0", None))
        pipeline.upserter_consumer().run(drain=True)
        assert cli(pipeline, "--yes", "rebuild", "--from-mongo") == 0
        pipeline.drain()
        # A slow embedder-worker finishes a change older than the delete.
        client.xadd(STAGE2_STREAM, entry("d", "200-0", "second, finished late"))
        pipeline.upserter_consumer().run(drain=True)
        assert "d" not in pipeline.points()

    def test_a_late_older_upsert_stays_deleted_in_a_recreated_collection(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd(STAGE2_STREAM, entry("d", "100-0", "first"))
        client.xadd(STAGE2_STREAM, entry("d", "300-0", None))
        pipeline.upserter_consumer().run(drain=True)
        pipeline.store.drop()
        client.xadd(STAGE2_STREAM, entry("d", "200-0", "second, finished late"))
        pipeline.upserter_consumer().run(drain=True)
        assert "d" not in pipeline.points()


class StallingStore:
    """A store that records each point's version after every write, and can stall one write."""

    WRITES = frozenset({"upsert", "write_if_newer", "delete"})

    def __init__(self, store: VectorStore, watched: str, versions: list[str | None]) -> None:
        self._store = store
        self._watched = watched
        self.versions = versions
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.stall_next_write = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in self.WRITES:
            return attribute

        def write(*args: Any, **kwargs: Any) -> Any:
            if self.stall_next_write:
                self.stall_next_write = False
                self.stalled.set()
                assert self.release.wait(WAIT_S), "the test never released the stalled write"
            result = attribute(*args, **kwargs)
            payloads = self._store.payloads([self._watched], fields=["version"])
            self.versions.append(payloads[self._watched]["version"] if payloads else None)
            return result

        return write


def two_upserters(pipeline: Pipeline, watched: str) -> tuple[StallingStore, Callable[[str], Any], list[str | None]]:
    """A stalling store for upserter-A, and a factory of the two upserters' consumers sharing Redis and the store."""
    from upserter.service import Upserter
    from upserter.settings import UpserterSettings
    from vecsync.consumer import StreamConsumer

    versions: list[str | None] = []
    stores = {name: StallingStore(pipeline.store, watched, versions) for name in ("upserter-a", "upserter-b")}
    # A lock outlives any Qdrant call (QDRANT_TIMEOUT_S); a write stalled past it has lost its locks.
    short = {"point_lock_ttl_ms": 1000, "qdrant_timeout_s": 0.5, "point_lock_wait_ms": 20_000}

    def consumer(name: str) -> StreamConsumer:
        settings = UpserterSettings(
            consumer_name=name,
            qdrant_path=pipeline.data_dir / "unused",
            redis_url=pipeline.redis_url,
            data_dir=pipeline.data_dir,
            **FAST,
            **short,
        )
        return StreamConsumer(
            pipeline.redis_client,
            stage="upserter",
            stream=STAGE2_STREAM,
            group=STAGE2_GROUP,
            handler=Upserter(settings, pipeline.redis_client, stores[name], pipeline.collection).handle,  # type: ignore[arg-type]
            settings=settings,
        )

    return stores["upserter-a"], consumer, versions


def run_stalled(pipeline: Pipeline, stalling: StallingStore, consumer: Callable[[str], Any], late: dict[str, str]):  # type: ignore[no-untyped-def]
    """Upserter-A takes the pending entry and stalls in its write; meanwhile upserter-B applies ``late``."""
    stalling.stall_next_write = True
    a = consumer("upserter-a")
    thread = threading.Thread(target=a.run, kwargs={"drain": True})
    thread.start()
    try:
        assert stalling.stalled.wait(WAIT_S), "upserter-A never wrote"
        pipeline.redis_client.xadd(STAGE2_STREAM, late)
        consumer("upserter-b").run(drain=True)  # waits for A's locks to lapse, then applies the newer change
    finally:
        stalling.release.set()
        thread.join(WAIT_S)
    assert not thread.is_alive()


class TestTwoUpserters:
    def test_a_write_stalled_past_its_locks_never_moves_a_point_backwards(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        pid = point_id(SOURCE, "d")
        stalling, consumer, versions = two_upserters(pipeline, pid)
        client.xadd(STAGE2_STREAM, entry("d", "200-0", "older"))
        run_stalled(pipeline, stalling, consumer, entry("d", "300-0", "newer"))
        assert versions and all(version == "300-0" for version in versions), versions
        payload = pipeline.points()["d"]
        assert payload["text"] == "newer" and payload["version"] == "300-0"
        # The upserter whose locks lapsed recorded nothing either.
        assert client.hget(APPLIED_TEXT_KEY, pid) == text_fingerprint(text_sha256("newer"), "m1")
        stats = client.xpending(STAGE2_STREAM, STAGE2_GROUP)
        assert stats["pending"] == 0

    def test_a_stalled_upsert_overtaken_by_a_delete_does_not_bring_the_document_back(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd(STAGE2_STREAM, entry("d", "100-0", "first"))
        pipeline.upserter_consumer().run(drain=True)
        stalling, consumer, versions = two_upserters(pipeline, point_id(SOURCE, "d"))
        client.xadd(STAGE2_STREAM, entry("d", "200-0", "second"))
        run_stalled(pipeline, stalling, consumer, entry("d", "300-0", None))
        assert "d" not in pipeline.points()
        assert versions[-1] is None
        assert client.hget(APPLIED_TEXT_KEY, point_id(SOURCE, "d")) is None


class TestModel:
    """A point's vector is right only for the model that made it."""

    def test_a_payload_only_change_of_another_model_is_embedded_again(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd(STAGE2_STREAM, entry("d", "100-0", "same text", model="m1"))
        pipeline.upserter_consumer().run(drain=True)
        client.xadd(STAGE2_STREAM, entry("d", "200-0", "same text", model="m2", op="payload"))
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.points()["d"]["version"] == "100-0", "the other model's payload was applied"
        assert client.xlen("raw_document_changes:dlq") == 1, "the change goes back to be embedded"

    def test_the_upserter_warns_once_when_the_collection_holds_another_models_points(
        self, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
    ) -> None:
        from upserter.model_check import OTHER_MODEL_POINTS

        client = pipeline.redis_client
        for n in range(3):
            client.xadd(STAGE2_STREAM, entry(f"old{n}", f"{100 + n}-0", f"text {n}", model="old-model"))
        pipeline.upserter_consumer().run(drain=True)
        caplog.set_level(logging.WARNING, logger="vecsync.upserter")
        client.xadd(STAGE2_STREAM, entry("new0", "200-0", "new text", model="new-model"))
        client.xadd(STAGE2_STREAM, entry("new1", "201-0", "new text", model="new-model"))
        consumer = pipeline.upserter_consumer(batch_size=1)
        consumer.run(drain=True)
        warnings = [r.getMessage() for r in caplog.records if "old-model" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "new-model" in warnings[0] and "vecsync verify --repair" in warnings[0]
        assert OTHER_MODEL_POINTS._value.get() == 3


class TestUpgrade:
    def test_a_point_of_an_earlier_release_is_fenced_by_its_version_string(self, pipeline: Pipeline) -> None:
        from vecsync.vectorstore import Point

        pid = point_id(SOURCE, "d")
        legacy = {"mongo_id": "d", "source": SOURCE, "text": "legacy", "text_sha256": "x", "version": "500-0"}
        pipeline.store.upsert([Point(pid, [1.0] * 384, legacy)])  # no version_ms, no model
        pipeline.redis_client.xadd(STAGE2_STREAM, entry("d", "300-0", "older"))
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.points()["d"]["text"] == "legacy"
        pipeline.redis_client.xadd(STAGE2_STREAM, entry("d", "600-0", "newer"))
        pipeline.upserter_consumer().run(drain=True)
        payload = pipeline.points()["d"]
        assert (payload["text"], payload["version_ms"], payload["version_seq"]) == ("newer", 600, 0)


def trim_everything(client: redis.Redis) -> None:
    """Trim both stages' streams down to what no group still needs and their last entry (no retention window)."""
    from vecsync.constants import STAGE1_STREAM
    from vecsync.retention import trim

    for stream in (STAGE1_STREAM, STAGE2_STREAM):
        trim(client, stream, keep_count=0, keep_age_s=0)


class TestTombstoneRemoval:
    """A tombstone goes once no change of its document older than it is left in either stream or dead-letter
    stream: nothing older can arrive any more, not even through a replay of what the streams retain."""

    def test_a_tombstone_goes_once_no_older_change_is_left(self, pipeline: Pipeline) -> None:
        pipeline.overrides["tombstone_sweep_interval_s"] = 0.001  # a sweep after every batch
        client, collection = pipeline.redis_client, pipeline.collection
        fence, deleted = tombstones_key(pipeline.store.collection), point_id(pipeline.source, "d")
        collection.insert_one({"_id": "d", "subject": "to be deleted"})
        pipeline.drain()
        collection.delete_one({"_id": "d"})
        pipeline.drain()
        assert client.hexists(fence, deleted), "the insert is still retained in both streams"
        trim_everything(client)  # leaves the delete, the last entry of each stream
        collection.insert_one({"_id": "e", "subject": "a later change"})
        pipeline.drain()
        assert not client.hexists(fence, deleted)
        pipeline.assert_matches_mongo()

    def test_a_late_older_change_cannot_bring_the_document_back_while_it_is_left(self, pipeline: Pipeline) -> None:
        pipeline.overrides["tombstone_sweep_interval_s"] = 0.001
        client, collection = pipeline.redis_client, pipeline.collection
        fence, deleted = tombstones_key(pipeline.store.collection), point_id(pipeline.source, "d")
        collection.insert_one({"_id": "d", "subject": "first"})
        pipeline.drain()
        collection.update_one({"_id": "d"}, {"$set": {"subject": "second, finished late"}})
        pipeline.run_producer()
        pipeline.embedder_consumer().run(drain=True)
        client.xreadgroup(STAGE2_GROUP, "slow", {STAGE2_STREAM: ">"})  # an upserter that stalls on the update
        collection.delete_one({"_id": "d"})
        pipeline.drain()
        for later in ("e", "f"):
            trim_everything(client)  # the update is pending: it stays, and everything after it
            collection.insert_one({"_id": later, "subject": "a later change"})
            pipeline.drain()
            assert client.hexists(fence, deleted), "the update older than the delete is still in stage 2"
        # The stalled upserter's entry is taken over at last: the tombstone keeps the document deleted.
        pipeline.upserter_consumer(claim_idle_ms=1).run(drain=True)
        assert "d" not in pipeline.points()
        trim_everything(client)
        collection.insert_one({"_id": "g", "subject": "a later change"})
        pipeline.drain()
        assert not client.hexists(fence, deleted)
        pipeline.assert_matches_mongo()

    def test_an_older_change_in_a_dead_letter_stream_keeps_the_tombstone(self, pipeline: Pipeline) -> None:
        from vecsync.constants import STAGE1_STREAM, dlq_stream
        from vecsync.dead_letters import dead_letter_fields

        pipeline.overrides["tombstone_sweep_interval_s"] = 0.001
        client, collection = pipeline.redis_client, pipeline.collection
        fence, deleted = tombstones_key(pipeline.store.collection), point_id(pipeline.source, "d")
        collection.insert_one({"_id": "d", "subject": "first"})
        pipeline.drain()
        [(inserted, _fields)] = client.xrange(STAGE1_STREAM)
        collection.delete_one({"_id": "d"})
        pipeline.drain()
        # The insert's stage 2 entry failed on an upserter and waits in the dead-letter stream, to be replayed.
        original = entry("d", inserted, "first")
        letter = dead_letter_fields(
            stream=STAGE2_STREAM,
            group=STAGE2_GROUP,
            entry_id=client.xrange(STAGE2_STREAM)[0][0],
            fields=original,
            error="failed",
            deliveries=5,
            consumer="upserter-9",
        )
        client.xadd(dlq_stream(STAGE2_STREAM), letter)
        trim_everything(client)
        collection.insert_one({"_id": "e", "subject": "a later change"})
        pipeline.drain()
        assert client.hexists(fence, deleted)
        client.delete(dlq_stream(STAGE2_STREAM))  # `vecsync dlq purge`
        collection.insert_one({"_id": "f", "subject": "a later change"})
        pipeline.drain()
        assert not client.hexists(fence, deleted)
