"""Long documents through the whole pipeline: one point per chunk, chunks that follow their document as it grows,
shrinks, is replaced or deleted, with no stale chunk and none missing, whichever stage fails mid-document.

The pipeline here embeds with the hash backend, whose chunks are counted in words (CHUNK_TOKENS less the two special
tokens a model adds): CHUNK_TOKENS=20 with an overlap of 4 makes a document of 60 chunks about 850 words long.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bson import ObjectId

from tests.support.pipeline import Pipeline
from vecsync.chunking import chunk_point_id
from vecsync.constants import DEFAULT_MAX_DOCUMENT_CHARS
from vecsync.documents import build_text, point_id, text_sha256
from vecsync.errors import TransientError
from vecsync.messages import EmbeddedDocument
from vecsync.mongo_reads import mongo_id_of
from vecsync.vectorstore import Point

CHUNK_TOKENS = 20
OVERLAP = 4
CHUNK_WORDS = CHUNK_TOKENS - 2


def words(count: int, tag: str) -> str:
    """``count`` distinct words, each naming ``tag`` and its place, in sentences of ten."""
    listed = [f"{tag}{i}" for i in range(count)]
    return " ".join(word + ("." if i % 10 == 9 else "") for i, word in enumerate(listed))


def chunks_for(count: int) -> int:
    """The words of a document of ``count`` chunks (its subject is one more word)."""
    step = CHUNK_WORDS - OVERLAP
    return CHUNK_WORDS + (count - 1) * step - 1 if count > 1 else 5


@pytest.fixture
def chunked(pipeline: Pipeline) -> Pipeline:
    pipeline.overrides.update(chunk_tokens=CHUNK_TOKENS, chunk_overlap_tokens=OVERLAP)
    return pipeline


def embedded_texts() -> float:
    from embedder_worker.service import TEXTS_EMBEDDED

    return TEXTS_EMBEDDED._value.get()


def all_points(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    points: dict[str, dict[str, Any]] = {}
    offset = None
    while True:
        page, offset = pipeline.store.scroll(limit=256, offset=offset)
        points |= page
        if offset is None:
            return points


def assert_chunks_match_mongo(pipeline: Pipeline) -> None:
    """Point by point, per chunk: every document with text has exactly its chunks 0..n-1 under their ids, each of the
    same version, each holding the document's current text at its span; nothing else is in the collection."""
    points = all_points(pipeline)
    expected_ids: set[str] = set()
    for document in pipeline.collection.find():
        text = build_text(document, ["subject", "content"], DEFAULT_MAX_DOCUMENT_CHARS)
        if not text:
            continue
        mongo_id = mongo_id_of(document["_id"])
        first_id = point_id(pipeline.source, mongo_id)
        first = points.get(first_id)
        assert first is not None, f"document {mongo_id} has no first chunk"
        count = first["chunk_count"]
        ids = [chunk_point_id(first_id, index) for index in range(count)]
        expected_ids |= set(ids)
        missing = [index for index, pid in enumerate(ids) if pid not in points]
        assert not missing, f"document {mongo_id} lacks chunks {missing} of {count}"
        chunks = [points[pid] for pid in ids]
        assert {chunk["version"] for chunk in chunks} == {first["version"]}, f"{mongo_id} mixes versions"
        assert [chunk["chunk_index"] for chunk in chunks] == list(range(count))
        assert {chunk["chunk_count"] for chunk in chunks} == {count}
        for chunk in chunks:
            start, end = chunk["chunk_span"]
            assert chunk["text"] == text[start:end], f"stale chunk {chunk['chunk_index']} of {mongo_id}"
            assert chunk["text_sha256"] == text_sha256(chunk["text"])
            assert chunk["mongo_id"] == mongo_id and chunk["truncated"] is False
        spans = [chunk["chunk_span"] for chunk in chunks]
        assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip()), f"{mongo_id}'s chunks do not cover its text"
        assert all(a[0] < b[0] < a[1] <= b[1] for a, b in itertools.pairwise(spans)) or count == 1
    extra = sorted({points[pid]["mongo_id"] for pid in set(points) - expected_ids})
    assert not extra, f"points left of documents {extra}"


def document(_id: Any, chunks: int, tag: str = "w") -> dict[str, Any]:
    return {"_id": _id, "subject": "Subject", "content": words(chunks_for(chunks), tag)}


def test_documents_of_1_to_60_chunks_get_one_point_per_chunk(chunked: Pipeline) -> None:
    oid = ObjectId()
    chunked.collection.insert_many(
        [document("one", 1), document("two", 2), document(oid, 7), document("sixty", 60), document(42, 13)]
    )
    chunked.drain()
    assert_chunks_match_mongo(chunked)
    counts = {mongo_id: chunked.chunks_of(mongo_id)[0]["chunk_count"] for mongo_id in ("one", "two", "sixty")}
    assert counts == {"one": 1, "two": 2, "sixty": 60}
    assert chunked.chunks_of(str(oid))[0]["chunk_count"] == 7
    # A short document keeps exactly the point it had before chunking: the document's id, its whole text.
    [short] = chunked.store.retrieve([point_id(chunked.source, "one")])
    text = "Subject\n\n" + words(5, "w")
    assert short.payload["text"] == text and short.payload["chunk_span"] == [0, len(text)]


def test_documents_that_grow_shrink_are_replaced_and_deleted_keep_no_stale_chunk(chunked: Pipeline) -> None:
    oid = ObjectId()
    chunked.collection.insert_many(
        [
            document("grows", 1),
            document("shrinks", 30),
            document(oid, 60),
            document("replaced", 9),
            document("gone", 12),
        ]
    )
    chunked.drain()
    assert_chunks_match_mongo(chunked)
    chunked.collection.update_one({"_id": "grows"}, {"$set": {"content": words(chunks_for(30), "g")}})
    chunked.collection.update_one({"_id": "shrinks"}, {"$set": {"content": words(chunks_for(2), "s")}})
    chunked.collection.update_one({"_id": oid}, {"$set": {"content": words(chunks_for(1), "o")}})
    chunked.collection.replace_one({"_id": "replaced"}, document("replaced", 14, "r"))
    chunked.collection.delete_one({"_id": "gone"})
    chunked.drain()
    assert_chunks_match_mongo(chunked)
    assert chunked.chunks_of("gone") == []
    assert [c["chunk_count"] for c in chunked.chunks_of(str(oid))] == [1]
    # Shrinking to nothing: a document that loses its text loses every chunk.
    chunked.collection.update_one({"_id": "grows"}, {"$unset": {"content": "", "subject": ""}})
    chunked.drain()
    assert chunked.chunks_of("grows") == []
    assert_chunks_match_mongo(chunked)


def test_an_edit_inside_one_chunk_embeds_only_that_chunk_again(chunked: Pipeline) -> None:
    chunked.collection.insert_one(document("edited", 20))
    chunked.drain()
    before = {c["chunk_index"]: c for c in chunked.chunks_of("edited")}
    # A word in the middle of chunk 10, away from the words it shares with its neighbours.
    word = before[10]["text"].split()[CHUNK_WORDS // 2]
    content = chunked.collection.find_one({"_id": "edited"})["content"].split(" ")  # type: ignore[index]
    assert content.count(word) == 1
    content[content.index(word)] = "EDITED"
    calls = embedded_texts()
    chunked.collection.update_one({"_id": "edited"}, {"$set": {"content": " ".join(content)}})
    chunked.drain()
    assert embedded_texts() - calls == 1, "other chunks than the edited one were embedded again"
    after = {c["chunk_index"]: c for c in chunked.chunks_of("edited")}
    assert "EDITED" in after[10]["text"] and after[10]["text_sha256"] != before[10]["text_sha256"]
    assert all(after[i]["text"] == before[i]["text"] for i in after if i != 10)
    assert {c["version"] for c in after.values()} != {c["version"] for c in before.values()}
    assert_chunks_match_mongo(chunked)


def test_an_upserter_that_fails_between_a_documents_writes_completes_it_on_retry(
    chunked: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked.collection.insert_many([document("long", 40), document("other", 3)])
    chunked.drain()
    chunked.collection.update_one({"_id": "long"}, {"$set": {"content": words(chunks_for(5), "n")}})
    chunked.collection.update_one({"_id": "other"}, {"$set": {"content": words(chunks_for(25), "m")}})
    chunked.run_producer()
    chunked.embedder_consumer().run(drain=True)
    write = chunked.store.write_if_newer
    failures = []

    def half_then_fail(**writes: Any) -> None:
        if len(failures) < 2:
            # The first time half the new chunks are written, the second time all but the prune: then the engine
            # is gone, as when the upserter is killed between its operations.
            upserts = writes["upserts"]
            write(upserts=upserts[: len(upserts) // 2] if not failures else upserts, payloads=writes["payloads"])
            failures.append(1)
            raise TransientError("the store went away mid-write")
        write(**writes)

    monkeypatch.setattr(chunked.store, "write_if_newer", half_then_fail)
    chunked.upserter_consumer().run(drain=True)
    assert len(failures) == 2
    assert_chunks_match_mongo(chunked)
    assert [c["chunk_count"] for c in chunked.chunks_of("long")] == [5] * 5


def test_a_worker_that_fails_mid_document_writes_nothing_of_it_until_it_succeeds(
    chunked: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedder_worker.embedding_client import EmbeddingClient

    chunked.overrides["embedding_request_texts"] = 8
    chunked.collection.insert_one(document("long", 30))
    chunked.run_producer()
    embed = EmbeddingClient.embed
    calls = []

    def fail_the_second_request(self: EmbeddingClient, texts: Any) -> Any:
        calls.append(len(texts))
        if len(calls) == 2:
            raise TransientError("the embedding-api went away mid-document")
        return embed(self, texts)

    monkeypatch.setattr(EmbeddingClient, "embed", fail_the_second_request)
    chunked.embedder_consumer().run(drain=True)
    assert calls[:2] == [8, 8] and len(calls) > 4
    entries = chunked.redis_client.xrange("embedded_documents")
    assert len(entries) == 1, "a failed batch left a partial document in stage 2"
    assert len(EmbeddedDocument.from_fields(entries[0][1]).chunks) == 30
    chunked.upserter_consumer().run(drain=True)
    assert_chunks_match_mongo(chunked)


def test_chunk_fields_and_entry_of_a_long_document(chunked: Pipeline) -> None:
    chunked.collection.insert_one({**document("long", 20), "owner": "Ann", "product": "Ledger"})
    chunked.drain()
    chunks = chunked.chunks_of("long")
    assert len(chunks) == 20
    # Every chunk carries the document's payload fields, so filters work on each, but only its own text.
    assert all(c["owner"] == "Ann" and c["product"] == "Ledger" for c in chunks)
    content = chunked.collection.find_one({"_id": "long"})["content"]  # type: ignore[index]
    assert sum(len(c["text"]) for c in chunks) < 1.5 * len(content)


def test_an_unchanged_chunk_whose_point_changed_under_a_lapsed_lock_is_embedded_again(
    chunked: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked.collection.insert_one(document("long", 6))
    chunked.drain()
    content = chunked.collection.find_one({"_id": "long"})["content"]  # type: ignore[index]
    chunked.collection.update_one({"_id": "long"}, {"$set": {"owner": "Bob"}})  # the text stays: no chunk to embed
    chunked.run_producer()
    chunked.embedder_consumer().run(drain=True)
    [entry] = [EmbeddedDocument.from_fields(f) for _id, f in chunked.redis_client.xrange("embedded_documents")][-1:]
    assert entry.op == "payload" and len(entry.chunks) == 6
    write = chunked.store.write_if_newer
    first_id = point_id(chunked.source, "long")

    def another_writer_first(**writes: Any) -> None:
        # What an upserter whose locks lapsed could do between this one's read and its write: chunk 3 now holds
        # another text, of a version between the two, so the payload write meant for it does not apply.
        [record] = chunked.store.retrieve([chunk_point_id(first_id, 3)], with_vectors=True)
        assert record.vector is not None
        older = int(entry.version.split("-")[0]) - 1
        payload = record.payload | {"text": "other", "text_sha256": text_sha256("other"), "version": f"{older}-9"}
        write(upserts=[Point(record.id, record.vector, payload)])
        monkeypatch.setattr(chunked.store, "write_if_newer", write)
        write(**writes)

    monkeypatch.setattr(chunked.store, "write_if_newer", another_writer_first)
    calls = embedded_texts()
    chunked.drain()
    assert embedded_texts() - calls == 6, "the document was not embedded again"
    assert_chunks_match_mongo(chunked)
    assert {c["owner"] for c in chunked.chunks_of("long")} == {"Bob"}
    assert content == chunked.collection.find_one({"_id": "long"})["content"]  # type: ignore[index]


def test_rebuild_from_stage2_restores_every_chunk_and_verify_finds_them_right(chunked: Pipeline) -> None:
    from tests.integration.test_cli import cli
    from vecsync.cli.context import EXIT_DRIFT, EXIT_OK

    overrides = {"chunk_tokens": CHUNK_TOKENS, "chunk_overlap_tokens": OVERLAP}
    chunked.collection.insert_many([document("long", 25), document("short", 1), document(ObjectId(), 8)])
    chunked.drain()
    chunked.collection.update_one({"_id": "long"}, {"$set": {"content": words(chunks_for(4), "x")}})
    chunked.collection.update_one({"_id": "short"}, {"$set": {"owner": "Ann"}})  # a payload-only entry
    chunked.drain()
    assert cli(chunked, "verify", **overrides) == EXIT_OK
    assert cli(chunked, "--yes", "rebuild", **overrides) == EXIT_OK
    assert chunked.store.count() == 0
    calls = embedded_texts()
    chunked.drain()
    assert embedded_texts() == calls, "a rebuild from stage 2 embedded texts again"
    assert_chunks_match_mongo(chunked)
    # A chunk lost behind the pipeline's back is found, and repaired.
    chunked.store.delete([chunk_point_id(point_id(chunked.source, "long"), 2)])
    assert cli(chunked, "verify", **overrides) == EXIT_DRIFT
    assert cli(chunked, "--yes", "verify", "--repair", **overrides) == EXIT_OK
    chunked.drain()
    assert_chunks_match_mongo(chunked)
    assert cli(chunked, "verify", "--restart", **overrides) == EXIT_OK
