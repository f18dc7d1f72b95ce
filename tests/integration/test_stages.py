"""Each consumer stage's own rules: ordering, tombstones, bad entries, a dependency down."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from tests.support.pipeline import Pipeline
from tests.support.servers import free_port, start_embedding_api, wait_for
from vecsync.constants import POINT_LOCK_PREFIX
from vecsync.documents import point_id
from vecsync.errors import TransientError
from vecsync.messages import DocumentChange, EmbeddedDocument
from vecsync.stream_stats import stream_stats

SOURCE = "app.documents"


def stage2_entry(mongo_id: str, version: str, *, text: str | None = "t", dim: int = 384) -> dict[str, str]:
    if text is None:
        doc = EmbeddedDocument("delete", SOURCE, mongo_id, 1.0, version)
    else:
        doc = EmbeddedDocument(
            "upsert", SOURCE, mongo_id, 1.0, version, [0.1] * dim, {"mongo_id": mongo_id, "text": text}
        )
    return doc.to_fields()


def dead_letters(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(stream + ":dlq")]


class TestUpserter:
    def test_an_older_change_never_overwrites_a_newer_one(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd("embedded_documents", stage2_entry("d", "200-0", text="newer"))
        pipeline.upserter_consumer().run(drain=True)
        # A slower worker delivers an older change afterwards.
        client.xadd("embedded_documents", stage2_entry("d", "100-0", text="older"))
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.points()["d"]["text"] == "newer"

    def test_a_late_upsert_does_not_resurrect_a_deleted_document(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd("embedded_documents", stage2_entry("d", "100-0", text="v1"))
        client.xadd("embedded_documents", stage2_entry("d", "300-0", text=None))
        pipeline.upserter_consumer().run(drain=True)
        client.xadd("embedded_documents", stage2_entry("d", "200-0", text="v2 arrived late"))
        pipeline.upserter_consumer().run(drain=True)
        assert "d" not in pipeline.points()

    def test_the_newest_change_in_a_batch_wins(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        for version, text in [("5-0", "five"), ("9-0", "nine"), ("7-0", "seven")]:
            client.xadd("embedded_documents", stage2_entry("d", version, text=text))
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.points()["d"]["text"] == "nine"

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({"v": "9", "op": "upsert"}, "unknown schema version"),
            ({**stage2_entry("x", "1-0"), "vector": "%%%"}, "not valid base64"),
            ({**stage2_entry("x", "1-0"), "payload": "{"}, "not valid JSON"),
            ({**stage2_entry("x", "1-0"), "version": "yesterday"}, "stream entry id"),
            ({k: v for k, v in stage2_entry("x", "1-0").items() if k != "mongo_id"}, "'mongo_id' is missing"),
            (stage2_entry("x", "1-0", dim=3), "3 dimensions"),
        ],
    )
    def test_bad_entries_are_dead_lettered_and_the_stream_flows(
        self, pipeline: Pipeline, fields: dict[str, str], reason: str
    ) -> None:
        client = pipeline.redis_client
        client.xadd("embedded_documents", fields)
        client.xadd("embedded_documents", stage2_entry("good", "2-0"))
        pipeline.upserter_consumer().run(drain=True)
        [letter] = dead_letters(client, "embedded_documents")
        assert reason in letter["error"]
        assert json.loads(letter["fields"]) == fields
        assert "good" in pipeline.points()


class TestEmbedder:
    def test_bad_stage1_entries_are_dead_lettered(self, pipeline: Pipeline) -> None:
        client = pipeline.redis_client
        client.xadd("raw_document_changes", {"v": "1", "op": "upsert", "source": SOURCE, "mongo_id": "x"})
        client.xadd("raw_document_changes", {"garbage": "yes"})
        good = DocumentChange("upsert", SOURCE, "ok", 1.0, {"subject": "fine"})
        client.xadd("raw_document_changes", good.to_fields())  # type: ignore[arg-type]
        pipeline.embedder_consumer().run(drain=True)
        errors = [letter["error"] for letter in dead_letters(client, "raw_document_changes")]
        assert len(errors) == 2 and "'changed_at' is missing" in errors[0] and "schema version" in errors[1]
        [(_id, out)] = client.xrange("embedded_documents")
        assert out["mongo_id"] == "ok" and out["op"] == "upsert"

    def test_deletes_pass_through_without_embedding(self, pipeline: Pipeline) -> None:
        pipeline.embedding_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a call would fail
        change = DocumentChange("delete", SOURCE, "gone", 1.0)
        entry_id = pipeline.redis_client.xadd("raw_document_changes", change.to_fields())  # type: ignore[arg-type]
        pipeline.embedder_consumer().run(drain=True)
        [(_id, out)] = pipeline.redis_client.xrange("embedded_documents")
        assert out["op"] == "delete" and out["version"] == entry_id

    def test_backlog_waits_while_the_embedding_api_is_down_then_drains(
        self, pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        port = free_port()
        pipeline.embedding_url = f"http://127.0.0.1:{port}"
        pipeline.collection.insert_many([{"subject": f"ticket {i}", "content": "text"} for i in range(20)])
        pipeline.run_producer()
        embedder = pipeline.embedder_consumer()
        worker = threading.Thread(target=embedder.run)
        worker.start()
        try:
            stats = stream_stats(pipeline.redis_client, "raw_document_changes", "embedding_processors")
            assert stats.length == 20 and pipeline.redis_client.xlen("embedded_documents") == 0
            api = start_embedding_api(tmp_path_factory.mktemp("late-api"), "hash", port=port)
            try:
                pipeline.upserter_consumer().run(drain=True)  # whatever is there so far
                wait_for(lambda: pipeline.redis_client.xlen("embedded_documents") == 20, what="the backlog to drain")
            finally:
                api.stop()
        finally:
            embedder.stop()
            worker.join(10)
        pipeline.upserter_consumer().run(drain=True)
        assert dead_letters(pipeline.redis_client, "raw_document_changes") == []
        pipeline.assert_matches_mongo()


class TestPointLocks:
    def test_a_restarted_upserter_takes_back_its_own_locks(self, pipeline: Pipeline) -> None:
        from upserter.point_locks import PointLocks

        client = pipeline.redis_client
        # upserter-1 crashed while holding the lock of point "p".
        client.set(POINT_LOCK_PREFIX + "p", "upserter-1", px=60_000)
        with pytest.raises(TransientError, match="locked by another upserter"):
            with PointLocks(client, holder="upserter-2", ttl_ms=60_000, wait_ms=50).hold(["p"]):
                pass
        with PointLocks(client, holder="upserter-1", ttl_ms=60_000, wait_ms=0).hold(["p"]):
            assert client.get(POINT_LOCK_PREFIX + "p") == "upserter-1"
        assert client.get(POINT_LOCK_PREFIX + "p") is None


class TestUnchangedText:
    """A change that leaves the text as Qdrant holds it costs no embedding call."""

    @staticmethod
    def embedded() -> float:
        from embedder_worker.service import TEXTS_EMBEDDED

        return TEXTS_EMBEDDED._value.get()

    def test_a_payload_only_change_is_not_embedded_again(self, pipeline: Pipeline) -> None:
        pipeline.collection.insert_one({"_id": "t", "subject": "same text", "owner": "Ann"})
        pipeline.drain()
        [before] = pipeline.store.retrieve([point_id(pipeline.source, "t")], with_vectors=True)
        calls = self.embedded()
        pipeline.collection.update_one({"_id": "t"}, {"$set": {"owner": "Bob"}})
        pipeline.drain()
        assert self.embedded() == calls, "the unchanged text was embedded again"
        [after] = pipeline.store.retrieve([point_id(pipeline.source, "t")], with_vectors=True)
        assert after.payload["owner"] == "Bob" and after.vector == before.vector
        assert after.payload["version"] > before.payload["version"]
        pipeline.assert_matches_mongo()

    def test_a_point_lost_since_gets_its_vector_back(self, pipeline: Pipeline) -> None:
        pipeline.collection.insert_one({"_id": "t", "subject": "same text", "owner": "Ann"})
        pipeline.drain()
        pipeline.store.delete([point_id(pipeline.source, "t")])  # behind the pipeline's back
        pipeline.collection.update_one({"_id": "t"}, {"$set": {"owner": "Bob"}})
        pipeline.drain()
        assert pipeline.points()["t"]["owner"] == "Bob"
        pipeline.assert_matches_mongo()

    def test_the_skip_can_be_switched_off(self, pipeline: Pipeline) -> None:
        pipeline.overrides["skip_unchanged_text"] = False
        pipeline.collection.insert_one({"_id": "t", "subject": "same text", "owner": "Ann"})
        pipeline.drain()
        calls = self.embedded()
        pipeline.collection.update_one({"_id": "t"}, {"$set": {"owner": "Bob"}})
        pipeline.drain()
        assert self.embedded() == calls + 1

    def test_the_hint_is_bounded_and_keeps_the_points_written_last(self, pipeline: Pipeline) -> None:
        from vecsync.constants import APPLIED_TEXT_KEY

        pipeline.overrides["skip_unchanged_hint_points"] = 4
        for n in range(12):  # one batch each, in order
            pipeline.collection.insert_one({"_id": f"t{n}", "subject": f"text {n}", "owner": "Ann"})
            pipeline.drain()
        hints = sum(len(pipeline.redis_client.keys(f"{APPLIED_TEXT_KEY}{tail}")) for tail in ("", ":*"))
        held = sum(pipeline.redis_client.hlen(key) for key in pipeline.redis_client.keys(f"{APPLIED_TEXT_KEY}*"))
        assert hints <= 2 and held <= 2 * 4, "at most two generations of SKIP_UNCHANGED_HINT_POINTS points"
        calls = self.embedded()
        pipeline.collection.update_one({"_id": "t11"}, {"$set": {"owner": "Bob"}})  # written last: still hinted
        pipeline.drain()
        assert self.embedded() == calls
        pipeline.collection.update_one({"_id": "t0"}, {"$set": {"owner": "Bob"}})  # its hint went: embedded again
        pipeline.drain()
        assert self.embedded() == calls + 1
        pipeline.assert_matches_mongo()

    def test_repeated_changes_in_one_batch_are_embedded_once(self, pipeline: Pipeline) -> None:
        pipeline.run_producer()
        pipeline.collection.insert_one({"_id": "r", "subject": "version 0"})
        for n in range(1, 5):
            pipeline.collection.replace_one({"_id": "r"}, {"subject": f"version {n}"})
        calls = self.embedded()
        pipeline.drain()
        assert self.embedded() == calls + 1
        assert pipeline.points()["r"]["text"] == "version 4"
