"""The operator CLI over a definition file of two syncs (VECSYNC_CONFIG), against real Redis, the MongoDB stand-in
and the embedded store: status per sync, --sync, and range conditions on a payload index through search --filter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
import requests

from tests.support.pipeline import Pipeline
from tests.support.stores import make_store
from vecsync.cli.context import EXIT_DRIFT, EXIT_OK, EXIT_USAGE, Context
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.constants import RESYNC_PROGRESS_PREFIX, VERIFY_PROGRESS_PREFIX
from vecsync.documents import payload_of, point_id, text_of
from vecsync.sync import Sync
from vecsync.syncs import load_syncs
from vecsync.vectorstore import Point, VectorStore

DEFINITIONS = """
syncs:
  - name: tickets
    mongo_database: {database}
    mongo_collection: {tickets}
    filter: {{status: {{$ne: spam}}}}
    text_fields: [subject, content]
    payload_fields: [product, meta.priority]
    payload_indexes: {{meta.priority: integer}}
  - name: articles
    mongo_database: {kb}
    mongo_collection: {articles}
    text_fields: [title, body.text]
    payload_fields: [author.name]
    qdrant_collection: kb_articles
"""


@dataclass
class TwoSyncs:
    """A definition file of two syncs on the test's servers, each Qdrant collection a store of its own."""

    pipeline: Pipeline
    settings: CliSettings
    syncs: dict[str, Sync]
    stores: dict[str, VectorStore]
    collections: dict[str, pymongo.collection.Collection[dict[str, Any]]]

    @property
    def redis(self) -> redis.Redis:
        return self.pipeline.redis_client

    def cli(self, *argv: str) -> int:
        ctx = Context(self.settings, interactive=False, _redis=self.redis)
        for name, sync in self.syncs.items():
            one = ctx.for_sync(sync)
            one._store, one._collection = self.stores[name], self.collections[name]
        ctx.close = lambda: None  # type: ignore[method-assign]  # the fixtures own the connections
        return main(list(argv), ctx)

    def write_point(self, name: str, document: dict[str, Any]) -> None:
        """The point the pipeline would write for ``document`` of sync ``name``, embedded by the hash backend."""
        sync = self.syncs[name]
        text = text_of(document, sync)
        mongo_id = str(document["_id"])
        payload = payload_of(document, sync, mongo_id=mongo_id, text=text, version="1-0", model="hash-384")
        vector = embed(self.pipeline, text)
        self.stores[name].upsert([Point(point_id(sync.source, mongo_id), vector, payload)])


def embed(pipeline: Pipeline, text: str) -> list[float]:
    reply = requests.post(f"{pipeline.embedding_url}/encode", json={"text": text}, timeout=30)
    reply.raise_for_status()
    return list(reply.json()["embedding"])


@pytest.fixture
def two_syncs(pipeline: Pipeline, tmp_path: Path) -> Iterator[TwoSyncs]:
    database = pipeline.collection.database
    tickets = pipeline.collection
    articles = database.client[f"kb_{database.name}"][f"{tickets.name}_articles"]
    config = tmp_path / "syncs.yaml"
    config.write_text(
        DEFINITIONS.format(
            database=database.name, tickets=tickets.name, kb=articles.database.name, articles=articles.name
        )
    )
    settings = CliSettings(
        vecsync_config=config,
        redis_url=pipeline.redis_url,
        mongo_uri=pipeline.mongo_uri,
        embedding_url=pipeline.embedding_url,
        data_dir=tmp_path,
    )
    syncs = {sync.name: sync for sync in load_syncs(settings)}
    stores = {
        name: make_store("embedded", tmp_path / name, collection=sync.qdrant_collection) for name, sync in syncs.items()
    }
    try:
        yield TwoSyncs(pipeline, settings, syncs, stores, {"tickets": tickets, "articles": articles})
    finally:
        for store in stores.values():
            store.close()


def status(two: TwoSyncs, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert two.cli("status", "--json") == EXIT_OK
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


class TestStatus:
    def test_status_reports_each_sync_and_is_drained_only_when_every_sync_is(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        two_syncs.write_point("tickets", {"_id": "t1", "subject": "printer jams", "meta": {"priority": 2}})
        report = status(two_syncs, capsys)
        assert set(report["syncs"]) == {"tickets", "articles"}
        tickets, articles = report["syncs"]["tickets"], report["syncs"]["articles"]
        assert tickets["source"] == two_syncs.syncs["tickets"].source
        assert tickets["qdrant_collection"] == "tickets" and articles["qdrant_collection"] == "kb_articles"
        assert tickets["stage1"]["stream"] == "raw_document_changes.tickets"
        assert articles["stage2"]["stream"] == "embedded_documents.articles"
        assert tickets["points"] == 1 and articles["points"] == 0
        assert tickets["snapshot"] is None and tickets["backlog"] == 0
        assert report["drained"] is True and tickets["drained"] and articles["drained"]

        # An entry of one sync's stage 1 that no worker read yet: that sync, and the pipeline, are not drained.
        two_syncs.redis.xadd("raw_document_changes.tickets", {"op": "delete"})
        report = status(two_syncs, capsys)
        assert report["drained"] is False
        assert report["syncs"]["tickets"]["drained"] is False and report["syncs"]["tickets"]["backlog"] == 1
        assert report["syncs"]["articles"]["drained"] is True
        assert report["pipeline"]["backlog"] == 1 and report["stage1"]["lag"] == 1

        # Read but not acknowledged: still not drained; acknowledged: drained.
        stream, group = "raw_document_changes.tickets", "embedding_processors"
        two_syncs.redis.xgroup_create(stream, group, id="0")
        [(_, [(entry_id, _)])] = two_syncs.redis.xreadgroup(group, "worker", {stream: ">"})
        assert status(two_syncs, capsys)["drained"] is False
        two_syncs.redis.xack(stream, group, entry_id)
        assert status(two_syncs, capsys)["drained"] is True

        # The other sync's stage 2, pending: the pipeline is not drained.
        stream, group = "embedded_documents.articles", "qdrant_upserters"
        two_syncs.redis.xgroup_create(stream, group, id="0", mkstream=True)
        two_syncs.redis.xadd(stream, {"op": "delete"})
        two_syncs.redis.xreadgroup(group, "upserter", {stream: ">"})
        report = status(two_syncs, capsys)
        assert report["drained"] is False and report["syncs"]["articles"]["stage2"]["pending"] == 1

    def test_status_in_words_names_each_sync(self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]) -> None:
        assert two_syncs.cli("status") == EXIT_OK
        out = capsys.readouterr().out
        assert "sync tickets: " in out and "-> Qdrant collection 'kb_articles'" in out, out

    def test_the_environments_one_sync_keeps_its_fields(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from tests.integration.test_cli import cli, seed

        seed(pipeline, 2)
        assert cli(pipeline, "status", "--json") == EXIT_OK
        report = json.loads(capsys.readouterr().out)
        assert report["drained"] is True and report["stage1"]["stream"] == "raw_document_changes"
        [(name, sync)] = report["syncs"].items()
        assert name == "default" and sync["source"] == pipeline.source and sync["points"] == 2


class TestSyncOption:
    def test_search_needs_sync_when_there_are_several(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert two_syncs.cli("search", "printer") == EXIT_USAGE
        err = capsys.readouterr().err
        assert "There are 2 syncs (tickets, articles): name the one to search with --sync NAME." in err, err

    @pytest.mark.parametrize(
        "command", [["search", "x"], ["verify"], ["resync", "--yes"], ["rebuild", "--yes"]], ids=lambda c: c[0]
    )
    def test_an_unknown_sync_is_refused_naming_the_syncs(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str], command: list[str]
    ) -> None:
        assert two_syncs.cli(*command, "--sync", "tikets") == EXIT_USAGE
        err = capsys.readouterr().err
        assert "There is no sync named 'tikets'. The syncs are: tickets, articles" in err, err

    def test_an_invalid_definition_file_is_exit_2(
        self, pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "bad.yaml"
        config.write_text("syncs:\n  - name: tickets\n    mongo_collection: tickets\n    text_fields: []\n")
        settings = CliSettings(vecsync_config=config, redis_url=pipeline.redis_url)
        assert main(["status"], Context(settings, interactive=False)) == EXIT_USAGE
        assert "key 'text_fields' is empty" in capsys.readouterr().err


class TestRangeFilters:
    def test_a_range_on_an_integer_payload_index_finds_exactly_the_points_within(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for priority in range(7):
            document = {"_id": f"t{priority}", "subject": f"printer {priority}", "meta": {"priority": priority}}
            two_syncs.write_point("tickets", {**document, "product": "Ledger" if priority % 2 else "Quill"})
        argv = ["search", "printer", "--sync", "tickets", "--limit", "10", "--json"]
        assert two_syncs.cli(*argv, "--filter", "meta.priority>=2", "--filter", "meta.priority<5") == EXIT_OK
        hits = json.loads(capsys.readouterr().out)
        assert sorted(hit["payload"]["meta"]["priority"] for hit in hits) == [2, 3, 4]
        assert two_syncs.cli(*argv, "--filter", "meta.priority>4", "--filter", "product=Ledger") == EXIT_OK
        assert [hit["payload"]["mongo_id"] for hit in json.loads(capsys.readouterr().out)] == ["t5"]
        assert two_syncs.cli(*argv, "--filter", "meta.priority=3") == EXIT_OK
        assert [hit["payload"]["mongo_id"] for hit in json.loads(capsys.readouterr().out)] == ["t3"]

    @pytest.mark.parametrize(
        ("condition", "message"),
        [
            ("meta.priority>=high", "'meta.priority' has an integer index, so the value must be a number"),
            ("meta.priority=high", "'meta.priority' has an integer index, so the value must be a number"),
            ("meta.urgency>2", "'meta.urgency' is not a payload field of sync 'tickets'"),
            ("product>2", "payload field 'product' of sync 'tickets' has a keyword index"),
            ("nonsense", "--filter takes FIELD=VALUE or a range such as FIELD>=VALUE"),
        ],
    )
    def test_a_condition_that_cannot_hold_is_exit_2(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str], condition: str, message: str
    ) -> None:
        assert two_syncs.cli("search", "x", "--sync", "tickets", "--filter", condition) == EXIT_USAGE
        assert message in capsys.readouterr().err


class TestVerifyAndResync:
    def test_verify_compares_structured_payloads_and_reads_only_the_filtered_documents(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tickets = two_syncs.collections["tickets"]
        documents = [
            {"_id": "t1", "subject": "printer", "meta": {"priority": 2}, "status": "open"},
            {"_id": "t2", "subject": "scanner", "meta": {"priority": 4}, "status": "open"},
            {"_id": "spam1", "subject": "buy now", "status": "spam"},
        ]
        tickets.insert_many([dict(document) for document in documents])
        for document in documents:
            two_syncs.write_point("tickets", document)  # spam1's point is outside the filter: extra
        two_syncs.collections["articles"].insert_one({"_id": "a1", "title": "How to", "author": {"name": "Ann"}})
        two_syncs.write_point("articles", {"_id": "a1", "title": "How to", "author": {"name": "Ann"}})

        assert two_syncs.cli("verify", "--sync", "articles") == EXIT_OK
        assert "0 missing, 0 extra, 0 stale" in capsys.readouterr().out
        assert not two_syncs.redis.exists(VERIFY_PROGRESS_PREFIX + "articles")

        tickets.update_one({"_id": "t2"}, {"$set": {"meta.priority": 5}})  # the point's nested payload is stale now
        assert two_syncs.cli("verify") == EXIT_DRIFT  # both syncs, one after the other
        out = capsys.readouterr().out
        assert "Sync tickets:" in out and "Sync articles:" in out
        assert "Checked 2 documents" in out, "the document outside the filter is not read"
        assert "0 missing, 1 extra, 1 stale" in out and "extra: spam1" in out and "stale: t2" in out, out

    def test_resync_publishes_the_filtered_documents_to_the_syncs_stream(
        self, two_syncs: TwoSyncs, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tickets = two_syncs.collections["tickets"]
        tickets.insert_many(
            [
                {"_id": "t1", "subject": "printer", "status": "open"},
                {"_id": "spam1", "subject": "buy now", "status": "spam"},
            ]
        )
        assert two_syncs.cli("--yes", "resync", "--sync", "tickets") == EXIT_OK
        entries = two_syncs.redis.xrange("raw_document_changes.tickets")
        assert [(fields["mongo_id"], fields["op"]) for _id, fields in entries] == [("t1", "upsert")]
        assert (
            two_syncs.redis.xlen("raw_document_changes") == 0
            and two_syncs.redis.xlen("raw_document_changes.articles") == 0
        )
        assert not two_syncs.redis.exists(RESYNC_PROGRESS_PREFIX + "tickets")
        assert "Resync published 1 document of" in capsys.readouterr().out
