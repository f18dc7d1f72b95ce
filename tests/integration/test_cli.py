"""The operator CLI against real Redis, the MongoDB stand-in and the embedded store."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from producer.service import Producer
from tests.support.fake_api import FakeApi
from tests.support.pipeline import Pipeline
from vecsync.cli.context import EXIT_DRIFT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Context
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.constants import VERIFY_PROGRESS_PREFIX
from vecsync.dead_letters import dead_letter_fields
from vecsync.documents import point_id
from vecsync.vectorstore import Point

VECSYNC = str(Path(sys.executable).parent / "vecsync")
# `| head` closed the pipe: the status of a writer whose reader went away (128 + SIGPIPE), as for any tool.
EXIT_BROKEN_PIPE = 141


def cli(pipeline: Pipeline, *argv: str, **overrides: Any) -> int:
    settings = CliSettings(
        redis_url=pipeline.redis_url,
        mongo_uri=pipeline.mongo_uri,
        mongo_database=pipeline.collection.database.name,
        mongo_collection=pipeline.collection.name,
        **{"embedding_url": pipeline.embedding_url, **overrides},
    )
    ctx = Context(settings, interactive=False, _redis=pipeline.redis_client, _collection=pipeline.collection)
    ctx._store = pipeline.store
    ctx.close = lambda: None  # type: ignore[method-assign]  # the fixtures own the connections
    return main(list(argv), ctx)


def dead_letter_stage2(pipeline: Pipeline, mongo_id: str, stream: str = "embedded_documents") -> None:
    """Put the first entry of ``mongo_id`` in ``stream`` (stage 2, or one of its partitions) in that stream's DLQ, as
    an upserter does with an entry it fails."""
    entry_id, fields = next(
        (entry_id, fields)
        for entry_id, fields in pipeline.redis_client.xrange(stream)
        if fields["mongo_id"] == mongo_id
    )
    letter = dead_letter_fields(
        stream=stream,
        group="qdrant_upserters",
        entry_id=entry_id,
        fields=fields,
        error="Qdrant rejected the request",
        deliveries=5,
        consumer="upserter-1",
    )
    pipeline.redis_client.xadd(stream + ":dlq", letter)


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
        # The embedding-api rejected this entry's text: it went to the DLQ.
        rejecting = FakeApi()
        rejecting.status, rejecting.body = 422, {"detail": "Text 0 cannot be read"}
        working_url, pipeline.embedding_url = pipeline.embedding_url, rejecting.url
        try:
            pipeline.embedder_consumer().run(drain=True)
        finally:
            pipeline.embedding_url = working_url
            rejecting.close()
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 1
        pipeline.collection.update_one({"_id": "poison"}, {"$set": {"subject": "fixed since"}})

        assert cli(pipeline, "dlq", "list") == EXIT_OK
        listing = capsys.readouterr().out
        assert "mongo_id=poison" in listing and "Text 0 cannot be read" in listing
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

        real = maintenance.publish_current_states
        calls = []

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(maintenance, "publish_current_states", interrupted)
        assert cli(pipeline, "--yes", "resync", "--batch-size", "2") == EXIT_INTERRUPTED
        monkeypatch.setattr(maintenance, "publish_current_states", real)
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

    @pytest.mark.parametrize(
        "command", [["resync", "--batch-size", "2"], ["rebuild", "--from-mongo", "--batch-size", "2"]]
    )
    def test_a_change_published_after_the_scan_read_its_document_is_not_overwritten(
        self, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, command: list[str]
    ) -> None:
        """Round after round, the scan reads a chunk; then every document changes and the producer publishes that
        before the resync looks at the producer's position. What the scan read is older than what the producer
        published, and must never be published after it."""
        seed(pipeline, 5)
        import vecsync.cli.maintenance as maintenance

        real = maintenance.publish_current_states
        edits = itertools.count()

        def producer_publishes_first(*args: Any, **kwargs: Any) -> Any:
            pipeline.collection.update_many({}, {"$set": {"content": f"edit {next(edits)}"}})
            pipeline.run_producer()
            return real(*args, **kwargs)

        monkeypatch.setattr(maintenance, "publish_current_states", producer_publishes_first)
        for _round in range(3):
            assert cli(pipeline, "--yes", *command) == EXIT_OK
        monkeypatch.setattr(maintenance, "publish_current_states", real)
        pipeline.drain()
        pipeline.assert_matches_mongo()

    @pytest.mark.parametrize("command", [["resync", "--batch-size", "1"], ["rebuild", "--from-mongo"]])
    def test_a_resync_beside_a_producer_publishing_updates_leaves_no_point_stale(
        self, pipeline: Pipeline, command: list[str]
    ) -> None:
        """The same race left to chance: a running producer publishes a stream of updates while resyncs run."""
        documents = 4
        seed(pipeline, documents)
        stopping = threading.Event()
        producer = Producer(pipeline.producer_settings(), pipeline.redis_client, pipeline.collection, stopping)

        def update() -> None:
            for n in itertools.count():
                if stopping.is_set():
                    return
                pipeline.collection.update_one({"_id": f"d{n % documents}"}, {"$set": {"content": f"edit {n}"}})

        threads = [threading.Thread(target=producer.run), threading.Thread(target=update)]
        for thread in threads:
            thread.start()
        try:
            for _round in range(20):
                assert cli(pipeline, "--yes", *command) == EXIT_OK
        finally:
            stopping.set()
            for thread in threads:
                thread.join()
        pipeline.drain()
        pipeline.assert_matches_mongo()

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


# --- what an operator sees: options where they type them, plain output in pipes, counts in proper number -----------


def cli_env(pipeline: Pipeline) -> dict[str, str]:
    """The environment of an operator's shell pointed at the test's pipeline."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "REDIS_URL": pipeline.redis_url,
        "MONGO_URI": pipeline.mongo_uri,
        "MONGO_DATABASE": pipeline.collection.database.name,
        "MONGO_COLLECTION": pipeline.collection.name,
        "EMBEDDING_URL": pipeline.embedding_url,
        "DATA_DIR": str(pipeline.data_dir),
    }


def run_vecsync(pipeline: Pipeline, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VECSYNC, *argv], env=cli_env(pipeline), capture_output=True, text=True, timeout=60)


class TestGlobalOptions:
    """Item 6: --yes (and -y) work before or after the subcommand, as the refusal tells the operator to add it."""

    def test_yes_after_the_subcommand(self, pipeline: Pipeline) -> None:
        seed(pipeline, 1)
        dead_letter_stage2(pipeline, "d0")
        assert cli(pipeline, "dlq", "replay", "--all", "--stage", "2", "--yes") == EXIT_OK
        assert pipeline.redis_client.xlen("embedded_documents:dlq") == 0
        assert cli(pipeline, "resync", "--yes") == EXIT_OK
        assert cli(pipeline, "resync", "-y", "--restart") == EXIT_OK

    def test_the_refusal_names_an_option_that_works_where_the_operator_adds_it(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        seed(pipeline, 1)
        assert cli(pipeline, "resync") == EXIT_USAGE
        assert "run again with --yes" in capsys.readouterr().err
        assert cli(pipeline, "resync", "--yes") == EXIT_OK


class TestOutputToAPipe:
    """Item 7: a reader that goes away, a pipe instead of a terminal, and counts of one."""

    def test_a_closed_pipe_ends_the_command_quietly(self, pipeline: Pipeline) -> None:
        seed(pipeline, 1)
        # `vecsync status --watch | head -4`: head reads four lines and goes away.
        with subprocess.Popen(
            [VECSYNC, "status", "--watch", "--interval", "0.1"],
            env=cli_env(pipeline),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as watch:
            assert watch.stdout is not None and watch.stderr is not None
            lines = [watch.stdout.readline() for _ in range(4)]
            watch.stdout.close()
            assert watch.wait(30) == EXIT_BROKEN_PIPE
            assert lines[0].startswith("Redis ")
            assert watch.stderr.read() == ""

    def test_watching_into_a_pipe_writes_no_terminal_codes(self, pipeline: Pipeline) -> None:
        seed(pipeline, 1)
        with subprocess.Popen(
            [VECSYNC, "status", "--watch", "--json", "--interval", "0.1"],
            env=cli_env(pipeline),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as watch:
            assert watch.stdout is not None
            reports = [json.loads(watch.stdout.readline()) for _ in range(2)]  # one JSON report per line
            watch.stdout.close()
            watch.wait(30)
        assert [report["stage1"]["length"] for report in reports] == [1, 1]

    def test_progress_into_a_pipe_is_plain_lines(self, pipeline: Pipeline) -> None:
        seed(pipeline, 3)
        resync = run_vecsync(pipeline, "resync", "--yes", "--batch-size", "1")
        assert resync.returncode == EXIT_OK, resync.stderr
        assert "\r" not in resync.stderr and "\x1b" not in resync.stderr
        assert "resync: 3/3 docs" in resync.stderr.splitlines()

    def test_counts_of_one_are_singular(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
        seed(pipeline, 2)
        dead_letter_stage2(pipeline, "d0")
        assert cli(pipeline, "dlq", "list") == EXIT_OK
        assert capsys.readouterr().out.splitlines()[-1] == "1 dead letter"
        pipeline.store.delete([point_id(pipeline.source, "d1")])
        assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
        out = capsys.readouterr().out
        assert "1 missing" in out and "Re-enqueued 1 document;" in out, out
        assert cli(pipeline, "--yes", "dlq", "replay", "--all") == EXIT_OK
        assert "Replayed 1 dead letter." in capsys.readouterr().out


def test_a_filter_on_a_field_that_is_no_payload_field_is_warned_about(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 8: a misspelt field silently found nothing."""
    seed(pipeline, 2)
    assert cli(pipeline, "search", "ticket", "--filter", "prodct=Brambleway Print 400") == EXIT_OK
    captured = capsys.readouterr()
    assert "No hits." in captured.out
    assert "'prodct' is not a payload field" in captured.err and "product" in captured.err, captured.err
    assert cli(pipeline, "search", "ticket", "--filter", "owner=nobody") == EXIT_OK
    assert capsys.readouterr().err == ""


class TestReplayRefusals:
    """Item 9: bad usage exits 2, and a letter that cannot be replayed is refused with the reason."""

    def test_replay_without_ids_is_bad_usage(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli(pipeline, "--yes", "dlq", "replay") == EXIT_USAGE
        assert "--all" in capsys.readouterr().err

    def test_a_stage1_letter_that_names_no_document_is_refused(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        garbled = dead_letter_fields(
            stream="raw_document_changes",
            group="embedding_processors",
            entry_id="1-0",
            fields={"garbage": "x"},
            error="the entry has no mongo_id",
            deliveries=1,
            consumer="embedder-1",
        )
        letter_id = pipeline.redis_client.xadd("raw_document_changes:dlq", garbled)
        assert cli(pipeline, "--yes", "dlq", "replay", letter_id) == EXIT_FAILED
        err = capsys.readouterr().err
        assert letter_id in err and "names no document" in err and "vecsync dlq purge" in err, err
        assert pipeline.redis_client.xlen("raw_document_changes:dlq") == 1
        assert pipeline.redis_client.xlen("raw_document_changes") == 0
