import math

import pytest

from vecsync.errors import InvalidEntry
from vecsync.messages import DocumentChange, EmbeddedDocument, pack_vector, parse_version, unpack_vector


def test_document_change_round_trips() -> None:
    change = DocumentChange("upsert", "app.documents", "abc", 1700000000.5, {"subject": "é", "n": [1, 2]})
    assert DocumentChange.from_fields(change.to_fields()) == change


def test_delete_carries_no_document() -> None:
    fields = DocumentChange("delete", "app.documents", "abc", 1.0).to_fields()
    assert "doc" not in fields
    assert DocumentChange.from_fields(fields).document is None


def test_embedded_document_round_trips_vectors_exactly_as_float32() -> None:
    vector = [0.1, -0.5, 1.0, 3.4e-5]
    doc = EmbeddedDocument("upsert", "s", "m", 2.0, "5-1", vector, {"text": "t"})
    back = EmbeddedDocument.from_fields(doc.to_fields())
    assert back.payload == {"text": "t"} and back.version == "5-1"
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(vector, back.vector or [], strict=True))


def test_packed_vectors_are_smaller_than_json() -> None:
    vector = [0.123456789] * 384
    assert len(pack_vector(vector)) < len(str(vector)) / 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "unknown schema version None"),
        ({"v": "2"}, "unknown schema version '2'"),
        ({"v": "1", "op": "merge"}, "'op' must be one of upsert, delete; got 'merge'"),
        (
            {"v": "1", "op": "upsert", "source": "s", "mongo_id": "m", "changed_at": "soon"},
            "'changed_at' is not a number",
        ),
        ({"v": "1", "op": "upsert", "source": "s", "mongo_id": "m", "changed_at": "1"}, "'doc' is missing"),
        (
            {"v": "1", "op": "upsert", "source": "s", "mongo_id": "m", "changed_at": "1", "doc": "[1]"},
            "must be a JSON object",
        ),
    ],
)
def test_garbled_stage1_entries_are_rejected_with_a_reason(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidEntry, match=message.replace("(", r"\(").replace(")", r"\)")):
        DocumentChange.from_fields(fields)


def test_vectors_with_nan_are_rejected() -> None:
    with pytest.raises(InvalidEntry, match="NaN"):
        unpack_vector(pack_vector([1.0, float("nan")]))


def test_versions_sort_like_stream_ids() -> None:
    assert parse_version("10-0") > parse_version("9-99")
    assert parse_version("10-10") > parse_version("10-2")
    with pytest.raises(InvalidEntry):
        parse_version("10")


def test_a_document_of_several_chunks_round_trips_with_its_vectors_in_place() -> None:
    from vecsync.messages import EmbeddedChunk

    chunks = (
        EmbeddedChunk(0, 5, "first", [0.5, 0.25]),
        EmbeddedChunk(4, 9, "t kept", None),
        EmbeddedChunk(9, 12, "end", [1.0, 0.0]),
    )
    doc = EmbeddedDocument("upsert", "s", "m", 2.0, "5-1", payload={"owner": "Ann"}, chunks=chunks)
    fields = doc.to_fields()
    assert "vector" not in fields and "vectors" in fields
    assert EmbeddedDocument.from_fields(fields) == doc
    assert EmbeddedDocument.from_fields(fields).vectors() == [[0.5, 0.25], [1.0, 0.0]]
    kept = EmbeddedDocument(
        "payload", "s", "m", 2.0, "5-1", payload={}, chunks=tuple(EmbeddedChunk(c.start, c.end, c.text) for c in chunks)
    )
    assert "vectors" not in kept.to_fields() and EmbeddedDocument.from_fields(kept.to_fields()) == kept


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chunks": "[not json"}, "not valid JSON"),
        ({"chunks": '[[0, 3, "one", 1]]'}, "two or more"),
        ({"chunks": '[[0, 3, "one", 1], [3, 1, "bad", 1]]'}, "not \\[start, end, text, 0 or 1\\]"),
        ({"chunks": '[[0, 3, "one", 0], [3, 5, "two", 0]]'}, "must carry chunks that are embedded"),
        ({"vectors": pack_vector([1.0, 2.0, 3.0])}, "not 2 vectors of one size"),
    ],
)
def test_a_garbled_document_of_chunks_is_an_invalid_entry(change: dict[str, str], message: str) -> None:
    from vecsync.messages import EmbeddedChunk

    chunks = (EmbeddedChunk(0, 3, "one", [1.0, 0.0]), EmbeddedChunk(3, 5, "two", [0.0, 1.0]))
    fields = EmbeddedDocument("upsert", "s", "m", 2.0, "5-1", payload={}, chunks=chunks).to_fields() | change
    with pytest.raises(InvalidEntry, match=message):
        EmbeddedDocument.from_fields(fields)
