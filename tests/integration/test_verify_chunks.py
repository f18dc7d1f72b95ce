"""`vecsync verify` compares a document with its chunk points chunk by chunk, and --repair re-enqueues what differs.

The chunk points are written here directly, with the ids and payloads the chunk model fixes (docs/design.md, "Long
documents"): chunk 0 under the document's point id, chunk i at chunk_point_id, each holding the document's text at a
real span of it (the hash backend's word split), beside the documents in the MongoDB stand-in.
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId

from tests.integration.test_cli import cli
from tests.support.pipeline import Pipeline
from vecsync.bson_codec import mongo_id_of, to_plain
from vecsync.chunking import chunk_point_id, word_spans
from vecsync.cli.chunk_check import uncovered
from vecsync.cli.context import EXIT_DRIFT, EXIT_INTERRUPTED, EXIT_OK
from vecsync.constants import VERIFY_PROGRESS_PREFIX
from vecsync.documents import payload_of, point_id, text_of
from vecsync.sync import Sync
from vecsync.syncs import sync_of
from vecsync.vectorstore import Point, with_version_numbers

MODEL = "hash-384"  # what the hash embedding-api of the pipeline fixture names
OLD, NEW = "1700000000000-0", "1700000000500-3"
WORDS, OVERLAP = 12, 3  # a chunk of 12 words, overlapping its neighbour by 3: a few sentences make many chunks

ID_KINDS = pytest.mark.parametrize("make_id", [ObjectId, lambda: "doc-a"], ids=["ObjectId", "string"])


def sync(pipeline: Pipeline) -> Sync:
    return sync_of(pipeline.producer_settings())


def words(count: int, start: int = 0) -> str:
    """A text of ``count`` words in sentences of six, three sentences a paragraph, whose words all differ."""
    end = start + count
    sentences = [" ".join(f"word{n}" for n in range(i, min(i + 6, end))) + "." for i in range(start, end, 6)]
    return "\n\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3))


def document_with_chunks(pipeline: Pipeline, make_id: Any, chunks: int) -> dict[str, Any]:
    """A document whose text the word split cuts into exactly ``chunks`` chunks (its subject is one more word)."""
    count = WORDS - 3 + (chunks - 1) * (WORDS - OVERLAP)
    document = {"_id": make_id(), "subject": "A long manual", "content": words(count), "owner": "Ann"}
    assert len(word_spans(text_of(to_plain(document), sync(pipeline)), WORDS, OVERLAP)) == chunks
    return document


def chunk_points(
    pipeline: Pipeline,
    document: dict[str, Any],
    *,
    version: str = NEW,
    text: str | None = None,
    legacy: bool = False,
) -> list[Point]:
    """The points the pipeline writes for ``document`` at ``version``: its text (or ``text``, a text it had once)
    split by words, each chunk's payload as the chunk model fixes it; ``legacy``: the one point written before
    chunking, with no chunk field."""
    the_sync, plain = sync(pipeline), to_plain(document)
    text = text if text is not None else text_of(plain, the_sync)
    mongo_id = mongo_id_of(document["_id"])
    document_point_id = point_id(the_sync.source, mongo_id)
    spans = [(0, len(text))] if legacy else word_spans(text, WORDS, OVERLAP)
    vector = [1.0] + [0.0] * (pipeline.store.dim - 1)
    points = []
    for index, (start, end) in enumerate(spans):
        payload = payload_of(plain, the_sync, mongo_id=mongo_id, text=text[start:end], version=version, model=MODEL)
        if not legacy:
            chunk = {"chunk_index": index, "chunk_count": len(spans), "chunk_span": [start, end], "truncated": False}
            payload |= chunk
        points.append(Point(chunk_point_id(document_point_id, index), vector, with_version_numbers(payload)))
    return points


def republished(pipeline: Pipeline) -> list[tuple[str, str]]:
    """The (mongo_id, op) of each entry --repair published to stage 1."""
    return [(fields["mongo_id"], fields["op"]) for _id, fields in pipeline.redis_client.xrange("raw_document_changes")]


def report(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = cli(pipeline, "verify", *argv)
    return status, capsys.readouterr().out


class TestCorrectDocumentsPass:
    def test_a_legacy_point_and_a_20_chunk_document_of_either_id_type_are_right(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        short = {"_id": ObjectId(), "subject": "Printer jams", "content": "It jams on page two.", "owner": "Bo"}
        long = document_with_chunks(pipeline, lambda: "manual-7", 20)
        pipeline.collection.insert_many([dict(short), dict(long)])
        points = chunk_points(pipeline, short, legacy=True) + chunk_points(pipeline, long)
        assert len(points) == 21 and "chunk_count" not in points[0].payload
        pipeline.store.upsert(points)

        status, out = report(pipeline, capsys, "--batch-size", "4")  # 21 points over 6 pages
        assert status == EXIT_OK, out
        assert "Checked 2 documents and 21 points: 0 missing, 0 extra, 0 stale (documents" in out, out
        assert not pipeline.redis_client.keys(VERIFY_PROGRESS_PREFIX + "*"), "the run leaves no key behind"


class TestEachDifferenceIsFound:
    @ID_KINDS
    def test_a_missing_chunk(self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], make_id: Any) -> None:
        document = document_with_chunks(pipeline, make_id, 5)
        pipeline.collection.insert_one(dict(document))
        points = chunk_points(pipeline, document)
        pipeline.store.upsert(points[:3] + points[4:])
        mongo_id = mongo_id_of(document["_id"])

        status, out = report(pipeline, capsys)
        assert status == EXIT_DRIFT
        assert "1 missing, 0 extra, 0 stale" in out and f"missing: {mongo_id}" in out, out
        assert f"{mongo_id}: chunk 3 is missing" in out

        assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
        assert republished(pipeline) == [(mongo_id, "upsert")]

    @ID_KINDS
    def test_a_chunk_beyond_chunk_count_is_extra_and_counted_once(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], make_id: Any
    ) -> None:
        # The document shrank from 9 chunks to 3 and chunks 3..8 of its older version were left behind.
        document = document_with_chunks(pipeline, make_id, 9)
        pipeline.collection.insert_one(dict(document))
        pipeline.store.upsert(chunk_points(pipeline, document, version=OLD)[3:])
        shorter = {**document, "content": words(WORDS - 3 + 2 * (WORDS - OVERLAP))}
        pipeline.collection.replace_one({"_id": document["_id"]}, shorter)
        pipeline.store.upsert(chunk_points(pipeline, shorter))
        mongo_id = mongo_id_of(document["_id"])

        status, out = report(pipeline, capsys, "--batch-size", "2")  # its 9 points over 5 pages
        assert status == EXIT_DRIFT
        assert "0 missing, 1 extra, 0 stale" in out and f"extra: {mongo_id}" in out, out
        assert f"{mongo_id}: chunk 5 is beyond the 3 chunks chunk 0 records" in out

        assert cli(pipeline, "--yes", "verify", "--repair", "--batch-size", "2") == EXIT_OK
        assert republished(pipeline) == [(mongo_id, "upsert")], "re-enqueued once, not once per page"

    @ID_KINDS
    def test_a_chunk_holding_the_text_of_an_older_version_is_stale(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], make_id: Any
    ) -> None:
        document = document_with_chunks(pipeline, make_id, 4)
        pipeline.collection.insert_one(dict(document))
        points = chunk_points(pipeline, document)
        old_text = text_of(to_plain(document), sync(pipeline)).replace("word15", "wordXY")
        points[1] = chunk_points(pipeline, document, text=old_text)[1]  # same span, the text it had before
        pipeline.store.upsert(points)
        mongo_id = mongo_id_of(document["_id"])

        status, out = report(pipeline, capsys)
        assert status == EXIT_DRIFT
        assert "0 missing, 0 extra, 1 stale" in out and f"stale: {mongo_id}" in out, out
        assert f"{mongo_id}: chunk 1 holds another text than the document's at" in out

    @ID_KINDS
    def test_a_chunk_of_an_older_version_left_among_the_chunks_is_stale(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], make_id: Any
    ) -> None:
        # Its text is still right, but the newer version's write of it never happened.
        document = document_with_chunks(pipeline, make_id, 4)
        pipeline.collection.insert_one(dict(document))
        points = chunk_points(pipeline, document)
        points[2] = chunk_points(pipeline, document, version=OLD)[2]
        pipeline.store.upsert(points)
        mongo_id = mongo_id_of(document["_id"])

        status, out = report(pipeline, capsys)
        assert status == EXIT_DRIFT
        assert "0 missing, 0 extra, 1 stale" in out, out
        assert f"{mongo_id}: chunk 2 is of version '{OLD}', chunk 0 of '{NEW}'" in out

        assert cli(pipeline, "--yes", "verify", "--repair") == EXIT_OK
        assert republished(pipeline) == [(mongo_id, "upsert")]

    @ID_KINDS
    def test_a_document_whose_text_grew_past_its_last_chunk_is_stale(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], make_id: Any
    ) -> None:
        document = document_with_chunks(pipeline, make_id, 3)
        legacy = {"_id": f"legacy-{make_id()}", "subject": "Short", "content": "One line."}
        pipeline.collection.insert_many([dict(document), dict(legacy)])
        pipeline.store.upsert(chunk_points(pipeline, document) + chunk_points(pipeline, legacy, legacy=True))
        appended = " A sentence added at the end."
        pipeline.collection.update_one({"_id": document["_id"]}, {"$set": {"content": document["content"] + appended}})
        pipeline.collection.update_one({"_id": legacy["_id"]}, {"$set": {"content": "One line." + appended}})
        mongo_id = mongo_id_of(document["_id"])

        status, out = report(pipeline, capsys)
        assert status == EXIT_DRIFT
        assert "0 missing, 0 extra, 2 stale" in out, out
        full = len(text_of(to_plain(pipeline.collection.find_one({"_id": document["_id"]}) or {}), sync(pipeline)))
        assert f"{mongo_id}: the text after character {full - len(appended)} of {full} is in no chunk" in out

    def test_the_chunks_of_a_deleted_document_are_extra_and_repair_publishes_its_delete(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        kept, gone = document_with_chunks(pipeline, ObjectId, 2), document_with_chunks(pipeline, lambda: "gone", 20)
        pipeline.collection.insert_one(dict(kept))
        pipeline.store.upsert(chunk_points(pipeline, kept) + chunk_points(pipeline, gone))

        status, out = report(pipeline, capsys, "--batch-size", "3")
        assert status == EXIT_DRIFT
        assert "0 missing, 1 extra, 0 stale" in out and "extra: gone\n" in out, out

        assert cli(pipeline, "--yes", "verify", "--repair", "--batch-size", "3") == EXIT_OK
        assert "Re-enqueued 1 document" in capsys.readouterr().out
        assert republished(pipeline) == [("gone", "delete")]

    def test_repair_re_enqueues_every_document_that_differs_once_and_no_other(
        self, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
    ) -> None:
        right, missing, both = (document_with_chunks(pipeline, lambda i=i: f"d{i}", 6) for i in range(3))
        pipeline.collection.insert_many([dict(right), dict(missing), dict(both)])
        points_of_both = chunk_points(pipeline, both)
        points_of_both[4] = chunk_points(pipeline, both, version=OLD)[4]
        pipeline.store.upsert(chunk_points(pipeline, right) + chunk_points(pipeline, missing)[:5] + points_of_both)
        # A chunk beyond chunk_count of chunk 0's own version: pruned by the newer version the repair gives.
        beyond = chunk_points(pipeline, {**both, "content": both["content"] + " " + words(20, 500)})[6]
        pipeline.store.upsert([beyond])

        status, out = report(pipeline, capsys, "--batch-size", "4")
        assert status == EXIT_DRIFT
        assert "1 missing, 1 extra, 1 stale" in out and "missing: d1" in out and "stale: d2" in out, out
        assert "extra: d2" in out and "d2: chunk 6 is beyond the 6 chunks chunk 0 records" in out

        assert cli(pipeline, "--yes", "verify", "--repair", "--batch-size", "4") == EXIT_OK
        assert "Re-enqueued 2 documents" in capsys.readouterr().out, "d2 once, though both scans find it"
        assert sorted(republished(pipeline)) == [("d1", "upsert"), ("d2", "upsert")]


def test_a_verify_interrupted_in_the_scan_of_points_counts_and_repairs_a_document_once(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.store.upsert(chunk_points(pipeline, document_with_chunks(pipeline, lambda: "gone", 20)))
    real_scroll, calls = pipeline.store.scroll, []

    def interrupted_on_fourth_page(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_scroll(**kwargs)

    monkeypatch.setattr(pipeline.store, "scroll", interrupted_on_fourth_page)
    assert cli(pipeline, "--yes", "verify", "--repair", "--batch-size", "3") == EXIT_INTERRUPTED
    assert republished(pipeline) == [("gone", "delete")]
    monkeypatch.setattr(pipeline.store, "scroll", real_scroll)
    capsys.readouterr()
    assert cli(pipeline, "--yes", "verify", "--repair", "--batch-size", "3") == EXIT_OK
    out = capsys.readouterr().out
    assert "Resuming the points phase" in out and "0 missing, 1 extra, 0 stale" in out, out
    assert republished(pipeline) == [("gone", "delete")], "not re-enqueued again after the resume"
    assert not pipeline.redis_client.keys(VERIFY_PROGRESS_PREFIX + "*")


class TestCoverage:
    """uncovered: what "the chunks cover the text" means."""

    def test_spans_may_overlap_and_leave_out_whitespace_at_their_edges(self) -> None:
        text = "  one two.\n\nthree four.  "
        assert uncovered(text, [(2, 10), (7, 23)]) is None  # overlapping, whitespace before, between and after
        assert uncovered(text, [(2, 10), (12, 23)]) is None  # a blank line between two chunks

    def test_text_outside_every_span_or_spans_out_of_order_do_not_cover_it(self) -> None:
        text = "one two. three four."
        assert uncovered(text, [(0, 8)]) == "the text after character 8 of 20 is in no chunk"
        assert uncovered(text, [(0, 4), (9, 20)]) == "the text at [4, 9] is in no chunk"
        assert uncovered(text, [(4, 20)]) == "the text at [0, 4] is in no chunk"
        assert "does not follow chunk 0's" in (uncovered(text, [(0, 20), (9, 20)]) or "")
        assert "is not inside the text" in (uncovered(text, [(0, 8), (8, 25)]) or "")
