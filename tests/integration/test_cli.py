"""The operator CLI against real Redis, the MongoDB stand-in and the embedded store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.pipeline import Pipeline
from vecsync.cli.context import EXIT_DRIFT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Context
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.constants import VERIFY_PROGRESS_PREFIX
from vecsync.documents import point_id
from vecsync.streams import dead_letter_fields
from vecsync.vectorstore import Point


def cli(pipeline: Pipeline, *argv: str, **overrides: Any) -> int:
    settings = CliSettings(
        redis_url=pipeline.redis_url,
        mongo_uri=pipeline.mongo_uri,
        mongo_database=pipeline.collection.database.name,
        mongo_collection=pipeline.collection.name,
        embedding_url=pipeline.embedding_url,
        **overrides,
    )
    ctx = Context(settings, interactive=False, _redis=pipeline.redis_client, _collection=pipeline.collection)
    ctx._store = pipeline.store
    ctx.close = lambda: None  # type: ignore[method-assign]  # the fixtures own the connections
    return main(list(argv), ctx)


def dead_letter_stage2(pipeline: Pipeline, mongo_id: str) -> None:
    """Put the first stage 2 entry of ``mongo_id`` in the stage 2 DLQ, as an upserter does with an entry it fails."""
    entry_id, fields = next(
        (entry_id, fields)
        for entry_id, fields in pipeline.redis_client.xrange("embedded_documents")
        if fields["mongo_id"] == mongo_id
    )
    letter = dead_letter_fields(
        stream="embedded_documents",
        group="qdrant_upserters",
        entry_id=entry_id,
        fields=fields,
        error="Qdrant rejected the request",
        deliveries=5,
        consumer="upserter-1",
    )
    pipeline.redis_client.xadd("embedded_documents:dlq", letter)


def seed(pipeline: Pipeline, count: int = 6) -> None:
    pipeline.collection.insert_many(
        [{"_id": f"d{i}", "subject": f"ticket {i}", "content": "text"} for i in range(count)]
    )
    pipeline.drain()


class TestStatusAndSearch:
    def test_status_reports_each_stage(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
        seed(pipeline, 3)
        assert cli(pipeline, "status", "--json") == EXIT_OK
        report = json.loads(capsys.readouterr().out)
        assert report["stage1"]["length"] == 3 and report["stage1"]["lag"] == 0 and report["stage1"]["pending"] == 0
        assert report["stage2"]["dlq_length"] == 0
        assert report["producer"]["resume_token_age_s"] is not None
        assert cli(pipeline, "status") == EXIT_OK
        assert "raw_document_changes / embedding_processors: length 3, lag 0" in capsys.readouterr().out

    def test_status_watch_refreshes_until_ctrl_c(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seed(pipeline, 1)
        sleeps = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 3:
                raise KeyboardInterrupt

        monkeypatch.setattr("vecsync.cli.main.time.sleep", sleep)
        assert cli(pipeline, "status", "--watch", "--interval", "0.5") == EXIT_OK
        assert sleeps == [0.5, 0.5, 0.5]
        assert capsys.readouterr().out.count("raw_document_changes / embedding_processors") == 3

    def test_search_prints_hits_and_rejects_bad_filters(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 3)
        assert cli(pipeline, "search", "ticket 1\n\ntext", "--limit", "1") == EXIT_OK
        assert "d1  ticket 1" in capsys.readouterr().out  # the hash backend matches identical text exactly
        assert cli(pipeline, "search", "x", "--filter", "nonsense") == EXIT_USAGE


class TestDeadLetters:
    def test_a_replayed_dead_letter_reaches_qdrant(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pipeline.collection.insert_one({"_id": "poison", "subject": "first"})
        pipeline.run_producer()
        # The embedding-api was broken for this entry: it went to the DLQ.
        pipeline.embedder_consumer(embedding_dim=3).run(drain=True)
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 1
        pipeline.collection.update_one({"_id": "poison"}, {"$set": {"subject": "fixed since"}})

        assert cli(pipeline, "dlq", "list") == EXIT_OK
        listing = capsys.readouterr().out
        assert "mongo_id=poison" in listing and "EMBEDDING_DIM is 3" in listing
        letter_id = listing.split()[0]
        assert cli(pipeline, "dlq", "show", letter_id) == EXIT_OK
        assert '"mongo_id": "poison"' in capsys.readouterr().out

        assert cli(pipeline, "dlq", "replay", letter_id) == EXIT_USAGE, "a replay needs confirmation"
        assert cli(pipeline, "--yes", "dlq", "replay", letter_id) == EXIT_OK
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 0
        pipeline.embedder_consumer().run(drain=True)
        pipeline.upserter_consumer().run(drain=True)
        # The replay re-read the document, so its current state, not the failed copy, is searchable.
        assert pipeline.points()["poison"]["subject"] == "fixed since"

    def test_a_stage2_letter_is_replayed_from_mongodb(self, pipeline: Pipeline) -> None:
        seed(pipeline, 1)
        dead_letter_stage2(pipeline, "d0")
        pipeline.store.delete([point_id(pipeline.source, "d0")])
        assert cli(pipeline, "--yes", "dlq", "replay", "--all", "--stage", "2") == EXIT_OK
        assert pipeline.redis_client.xlen("embedded_documents:dlq") == 0
        pipeline.drain()
        assert "d0" in pipeline.points()

    def test_a_stage2_letter_replayed_after_a_rebuild_keeps_a_deleted_document_deleted(
        self, pipeline: Pipeline
    ) -> None:
        seed(pipeline, 2)
        dead_letter_stage2(pipeline, "d0")
        pipeline.collection.delete_one({"_id": "d0"})
        pipeline.drain()
        assert cli(pipeline, "--yes", "rebuild", "--from-mongo") == EXIT_OK
        pipeline.drain()
        assert cli(pipeline, "--yes", "dlq", "replay", "--all", "--stage", "2") == EXIT_OK
        pipeline.drain()
        assert "d0" not in pipeline.points()
        pipeline.assert_matches_mongo()

    def test_a_stage2_letter_replayed_after_a_rebuild_yields_the_current_state(self, pipeline: Pipeline) -> None:
        seed(pipeline, 1)
        dead_letter_stage2(pipeline, "d0")
        pipeline.collection.update_one({"_id": "d0"}, {"$set": {"subject": "edited since"}})
        pipeline.drain()
        assert cli(pipeline, "--yes", "rebuild", "--from-mongo") == EXIT_OK
        assert cli(pipeline, "--yes", "dlq", "replay", "--all", "--stage", "2") == EXIT_OK
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.points().get("d0", {}).get("subject") in (None, "edited since"), "an older state came back"
        pipeline.drain()
        assert pipeline.points()["d0"]["subject"] == "edited since"

    def test_a_stage2_letter_of_another_collection_is_left_in_its_dlq(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 1)
        dead_letter_stage2(pipeline, "d0")
        [(entry_id, fields)] = pipeline.redis_client.xrange("embedded_documents:dlq")
        original = {**json.loads(fields["fields"]), "source": "other.documents"}
        pipeline.redis_client.xadd("embedded_documents:dlq", {**fields, "fields": json.dumps(original)})
        pipeline.redis_client.xdel("embedded_documents:dlq", entry_id)
        before = pipeline.redis_client.xlen("embedded_documents")
        assert cli(pipeline, "--yes", "dlq", "replay", "--all", "--stage", "2") == EXIT_FAILED
        assert "other.documents" in capsys.readouterr().err
        assert pipeline.redis_client.xlen("embedded_documents:dlq") == 1
        assert pipeline.redis_client.xlen("embedded_documents") == before

    def test_purge(self, pipeline: Pipeline) -> None:
        pipeline.redis_client.xadd("raw_document_changes:dlq", {"error": "x"})
        assert cli(pipeline, "--yes", "dlq", "purge") == EXIT_OK
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 0


class TestVerify:
    def test_verify_finds_and_repairs_every_kind_of_drift(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 6)
        store, source = pipeline.store, pipeline.source
        # 1. A point deleted behind the pipeline's back.
        store.delete([point_id(source, "d1")])
        # 2. A point whose text was altered.
        [record] = store.retrieve([point_id(source, "d2")], with_vectors=True)
        store.upsert([Point(str(record.id), record.vector, {**record.payload, "text_sha256": "tampered"})])  # type: ignore[arg-type]
        # 3. A change that never reached Qdrant: its stage 1 entry vanished before any worker read it.
        pipeline.collection.insert_one({"_id": "lost", "subject": "never embedded"})
        pipeline.run_producer()
        [(lost_entry, _)] = pipeline.redis_client.xrevrange("raw_document_changes", count=1)
        pipeline.redis_client.xdel("raw_document_changes", lost_entry)
        # 4. A point whose document is gone.
        pipeline.collection.delete_one({"_id": "d3"})
        pipeline.run_producer()
        [(delete_entry, _)] = pipeline.redis_client.xrevrange("raw_document_changes", count=1)
        pipeline.redis_client.xdel("raw_document_changes", delete_entry)

        assert cli(pipeline, "verify") == EXIT_DRIFT
        report = capsys.readouterr().out
        assert "1 missing" not in report  # two are missing: d1 and lost
        assert "2 missing, 1 extra, 1 stale" in report
        assert "missing: d1, lost" in report and "stale: d2" in report and "extra: d3" in report

        assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
        assert "Re-enqueued 4 documents" in capsys.readouterr().out
        pipeline.drain()
        pipeline.assert_matches_mongo()
        assert cli(pipeline, "verify") == EXIT_OK
        assert "0 missing, 0 extra, 0 stale" in capsys.readouterr().out

    def test_an_interrupted_verify_resumes(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seed(pipeline, 6)
        pipeline.store.delete([point_id(pipeline.source, "d5")])
        real_payloads = pipeline.store.payloads
        calls = []

        def interrupted_on_second_batch(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_payloads(*args, **kwargs)

        monkeypatch.setattr(pipeline.store, "payloads", interrupted_on_second_batch)
        assert cli(pipeline, "verify", "--batch-size", "2") == EXIT_INTERRUPTED
        assert pipeline.redis_client.get(VERIFY_PROGRESS_PREFIX + pipeline.source)
        monkeypatch.setattr(pipeline.store, "payloads", real_payloads)
        capsys.readouterr()
        assert cli(pipeline, "verify", "--batch-size", "2") == EXIT_DRIFT
        out = capsys.readouterr().out
        assert "Resuming the documents phase" in out
        assert "Checked 6 documents" in out and "1 missing" in out
        assert not pipeline.redis_client.get(VERIFY_PROGRESS_PREFIX + pipeline.source)


class TestResyncAndRebuild:
    def test_resync_republishes_in_id_order_and_resumes(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seed(pipeline, 5)
        before = pipeline.redis_client.xlen("raw_document_changes")
        import vecsync.cli.maintenance as maintenance

        real = maintenance.publish_beside_producer
        calls = []

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(maintenance, "publish_beside_producer", interrupted)
        assert cli(pipeline, "--yes", "resync", "--batch-size", "2") == EXIT_INTERRUPTED
        monkeypatch.setattr(maintenance, "publish_beside_producer", real)
        assert cli(pipeline, "--yes", "resync", "--batch-size", "2") == EXIT_OK
        entries = pipeline.redis_client.xrange("raw_document_changes")[before:]
        assert [fields["mongo_id"] for _id, fields in entries] == ["d0", "d1", "d2", "d3", "d4"]

    def test_resync_with_a_filter(self, pipeline: Pipeline) -> None:
        seed(pipeline, 4)
        before = pipeline.redis_client.xlen("raw_document_changes")
        assert cli(pipeline, "--yes", "resync", "--filter", '{"subject": "ticket 2"}') == EXIT_OK
        entries = pipeline.redis_client.xrange("raw_document_changes")[before:]
        assert [fields["mongo_id"] for _id, fields in entries] == ["d2"]
        assert cli(pipeline, "--yes", "resync", "--filter", "{not json") == EXIT_USAGE

    def test_a_newer_change_wins_over_a_concurrent_resync(self, pipeline: Pipeline) -> None:
        seed(pipeline, 2)
        pipeline.collection.update_one({"_id": "d0"}, {"$set": {"subject": "newest"}})
        assert cli(pipeline, "--yes", "resync") == EXIT_OK
        pipeline.drain()
        assert pipeline.points()["d0"]["subject"] == "newest"

    def test_rebuild_from_stage2_reapplies_without_reembedding(self, pipeline: Pipeline) -> None:
        seed(pipeline, 4)
        pipeline.collection.delete_one({"_id": "d0"})
        pipeline.drain()
        embedded = pipeline.redis_client.xlen("embedded_documents")
        assert cli(pipeline, "--yes", "rebuild") == EXIT_OK
        assert pipeline.store.count() == 0
        pipeline.upserter_consumer().run(drain=True)
        assert pipeline.redis_client.xlen("embedded_documents") == embedded
        pipeline.assert_matches_mongo()

    def test_rebuild_reads_mongo_once_stage2_was_trimmed(self, pipeline: Pipeline) -> None:
        seed(pipeline, 4)
        assert cli(pipeline, "--yes", "trim", stream_retention_count=1) == EXIT_OK
        assert pipeline.redis_client.xlen("embedded_documents") == 1
        assert cli(pipeline, "--yes", "rebuild") == EXIT_OK
        pipeline.drain()
        pipeline.assert_matches_mongo()


def test_trim_never_drops_unacknowledged_entries(pipeline: Pipeline) -> None:
    seed(pipeline, 4)
    pipeline.collection.insert_many([{"_id": f"new{i}", "subject": "s"} for i in range(3)])
    pipeline.run_producer()  # 3 entries no worker has read yet
    assert cli(pipeline, "--yes", "trim", stream_retention_count=0) == EXIT_OK
    assert pipeline.redis_client.xlen("raw_document_changes") == 3
    pipeline.drain()
    pipeline.assert_matches_mongo()
