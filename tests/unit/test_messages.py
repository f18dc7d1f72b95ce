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
