import uuid

from vecsync.documents import POINT_NAMESPACE, build_payload, build_text, point_id, text_sha256


def test_point_ids_are_uuid5_of_source_and_id() -> None:
    assert point_id("app.documents", "abc") == str(uuid.uuid5(POINT_NAMESPACE, "app.documents:abc"))
    assert point_id("app.documents", "abc") == point_id("app.documents", "abc")
    assert point_id("app.documents", "abc") != point_id("app.other", "abc")


def test_text_joins_non_empty_strings_in_field_order() -> None:
    document = {"subject": "S", "content": "C", "meta": {"note": "N"}}
    assert build_text(document, ["content", "subject"], 100) == "C\n\nS"
    assert build_text(document, ["subject", "meta.note"], 100) == "S\n\nN"


def test_text_skips_missing_empty_and_non_string_values() -> None:
    document = {"subject": "  ", "content": None, "tags": ["a"], "n": 5, "body": "B"}
    assert build_text(document, ["subject", "content", "tags", "n", "missing", "body"], 100) == "B"
    assert build_text({}, ["subject"], 100) == ""


def test_text_is_cut_and_cleaned() -> None:
    assert build_text({"s": "x" * 50}, ["s"], 10) == "x" * 10
    assert build_text({"s": "a\ud800b"}, ["s"], 10) == "a?b"


def test_payload_has_identity_text_hash_version_and_fields() -> None:
    payload = build_payload(
        {"owner": "O", "date": "2026-01-01T00:00:00Z", "x": 1},
        ["owner", "date", "absent"],
        source="app.documents",
        mongo_id="m",
        text="hello",
        version="1-0",
        model="all-MiniLM-L6-v2",
    )
    assert payload == {
        "owner": "O",
        "date": "2026-01-01T00:00:00Z",
        "mongo_id": "m",
        "source": "app.documents",
        "text": "hello",
        "text_sha256": text_sha256("hello"),
        "version": "1-0",
        "model": "all-MiniLM-L6-v2",
    }
