"""The sync definition file: what it builds, and every problem it can hold reported at once, naming file, sync, key."""

import textwrap
from pathlib import Path

import pytest
from bson import ObjectId

from embedder_worker.settings import EmbedderSettings
from producer.settings import ProducerSettings
from upserter.settings import UpserterSettings
from vecsync import settings as settings_module
from vecsync.documents import mapped_payload, mapped_text, payload_of, text_of
from vecsync.errors import ConfigurationError
from vecsync.syncs import load_syncs, settings_for, sync_of

EXAMPLE = """
syncs:
  - name: tickets
    mongo_database: app
    mongo_collection: tickets
    filter: {status: {$ne: spam}}
    text_fields: [subject, content]
    payload_fields: [product, status, meta.priority, tags]
    payload_indexes: {meta.priority: integer, date: datetime}
    qdrant_collection: tickets
  - name: articles
    mongo_database: kb
    mongo_collection: articles
    text_fields: [title, body.text]
    payload_fields: [author.name]
    qdrant_collection: kb_articles
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncs.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_from(monkeypatch: pytest.MonkeyPatch, path: Path) -> list:
    monkeypatch.setenv("VECSYNC_CONFIG", str(path))
    return load_syncs(settings_module.load(UpserterSettings))


def problems_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as error:
        load_from(monkeypatch, write(tmp_path, text))
    return str(error.value)


def test_without_a_file_the_environment_is_the_one_sync_with_the_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_COLLECTION", "tickets")
    monkeypatch.setenv("TEXT_FIELDS", "title,body")
    (sync,) = load_syncs(settings_module.load(ProducerSettings))
    assert (sync.name, sync.source, sync.state_name) == ("default", "app.tickets", "app.tickets")
    assert (sync.stage1_stream, sync.stage2_stream) == ("raw_document_changes", "embedded_documents")
    assert sync.applied_text_key == "vecsync:upserter:applied_text"
    assert sync.text_fields == ("title", "body") and not sync.structured and sync.filter is None


def test_the_example_file_builds_two_syncs_with_their_own_streams_and_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tickets, articles = load_from(monkeypatch, write(tmp_path, EXAMPLE))
    assert (tickets.source, tickets.qdrant_collection, tickets.state_name) == ("app.tickets", "tickets", "tickets")
    assert tickets.stage1_stream == "raw_document_changes.tickets"
    assert tickets.stage2_stream == "embedded_documents.tickets"
    assert tickets.filter == {"status": {"$ne": "spam"}}
    # An indexed field is a payload field too; the others are keyword-indexed.
    assert tickets.indexed_payload() == {
        "product": "keyword",
        "status": "keyword",
        "meta.priority": "integer",
        "tags": "keyword",
        "date": "datetime",
    }
    assert (articles.source, articles.qdrant_collection, articles.filter) == ("kb.articles", "kb_articles", None)
    assert articles.applied_text_key == "vecsync:upserter:applied_text.articles"


def test_settings_for_a_sync_carry_its_fields_and_find_the_sync_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tickets, _ = load_from(monkeypatch, write(tmp_path, EXAMPLE))
    worker = settings_for(settings_module.load(EmbedderSettings), tickets)
    assert worker.stage1_stream == "raw_document_changes.tickets" and worker.text_fields == ["subject", "content"]
    assert sync_of(worker) is tickets
    upserter = settings_for(settings_module.load(UpserterSettings), tickets)
    assert (upserter.mongo_collection, upserter.qdrant_collection) == ("tickets", "tickets")
    # Settings not made for a sync are the environment's.
    assert sync_of(settings_module.load(EmbedderSettings)).name == "default"


def test_filters_read_extended_json_and_yaml_dates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (sync,) = load_from(
        monkeypatch,
        write(
            tmp_path,
            """
            syncs:
              - name: recent
                mongo_collection: tickets
                text_fields: [subject]
                filter: {_id: {$ne: {$oid: 5f1d7f0e2a4b3c0012345678}}, created: {$gte: 2024-01-31}}
            """,
        ),
    )
    assert sync.filter is not None
    assert sync.filter["_id"] == {"$ne": ObjectId("5f1d7f0e2a4b3c0012345678")}
    assert sync.filter["created"]["$gte"].isoformat().startswith("2024-01-31T00:00:00")
    assert sync.query({"_id": 1}) == {"$and": [{"_id": 1}, sync.filter]}


def test_every_problem_is_reported_at_once_naming_file_sync_and_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    said = problems_of(
        monkeypatch,
        tmp_path,
        """
        syncs:
          - name: tickets
            mongo_collection: tickets
            text_feilds: [subject]
          - name: tickets
            mongo_collection: other
            text_fields: []
            filter: [status]
          - name: bad name
            mongo_collection: x
            text_fields: [meta..title]
            payload_fields: [text, version.major, .x]
            filter: {status: {$neq: spam}, $match: {a: 1}}
            payload_indexes: {date: timestamp}
        """,
    )
    assert str(tmp_path / "syncs.yaml") in said
    assert "sync 'tickets' (syncs[0]): key 'text_feilds' is not known (did you mean 'text_fields'?)" in said
    assert "sync 'tickets' (syncs[0]): key 'text_fields' is required" in said
    assert "sync 'tickets' (syncs[1]): key 'text_fields' is empty" in said
    assert "sync 'tickets' (syncs[1]): key 'filter' must be a MongoDB query document" in said
    assert "key 'name' must be letters, digits, - and _ (got 'bad name')" in said
    assert "'meta..title' has an empty part" in said and "'.x' has an empty part" in said
    assert "payload field 'text' would overwrite vecsync's own payload key 'text'" in said
    assert "payload field 'version.major' would overwrite vecsync's own payload key 'version'" in said
    assert "'status' has '$neq', which is not a query operator (did you mean '$ne'?)" in said
    assert "'$match' is not a query operator that may stand beside field names" in said
    assert "'date' has index type 'timestamp'" in said


def test_duplicate_names_and_colliding_points_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    said = problems_of(
        monkeypatch,
        tmp_path,
        """
        syncs:
          - {name: a, mongo_collection: tickets, text_fields: [subject], qdrant_collection: shared,
             payload_indexes: {n: integer}}
          - {name: b, mongo_collection: tickets, text_fields: [content], qdrant_collection: shared,
             payload_indexes: {n: float}}
          - {name: a, mongo_collection: other, text_fields: [subject]}
        """,
    )
    assert "sync 'a': the name is given to 2 syncs" in said
    assert "syncs 'a' and 'b' both write app.tickets into Qdrant collection 'shared'" in said
    assert "index payload field 'n' as integer and as float" in said


def test_two_sources_may_share_one_collection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tickets, articles = load_from(
        monkeypatch,
        write(
            tmp_path,
            """
            syncs:
              - {name: tickets, mongo_collection: tickets, text_fields: [subject], qdrant_collection: search}
              - {name: articles, mongo_database: kb, mongo_collection: articles, text_fields: [title],
                 qdrant_collection: search}
            """,
        ),
    )
    assert tickets.qdrant_collection == articles.qdrant_collection == "search"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("syncs: [", "is not valid YAML"),
        ("- name: a", "the file must be a mapping whose key 'syncs' holds a list"),
        ("syncs: []\nsinks: 1", "the file must be a mapping"),
        ("syncs: [{name: a, mongo_collection: c, text_fields: [s]}]\nsinc: 1", "key 'sinc' is not known at the top"),
    ],
)
def test_a_file_that_is_not_a_definition_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in problems_of(monkeypatch, tmp_path, text)


def test_a_missing_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"VECSYNC_CONFIG names .*missing.yaml, which cannot be read"):
        load_from(monkeypatch, tmp_path / "missing.yaml")


def test_the_environment_sync_refuses_own_payload_keys_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYLOAD_FIELDS", "product,model")
    with pytest.raises(ConfigurationError, match="PAYLOAD_FIELDS 'model' would overwrite vecsync's own payload key"):
        load_syncs(settings_module.load(UpserterSettings))


def test_the_structured_mapping_reads_arrays_numbers_and_nesting() -> None:
    document = {
        "subject": "Printer",
        "tags": ["urgent", "", "hardware"],
        "count": 3,
        "open": True,
        "comments": [{"text": "first"}, {"text": "second", "author": "b"}],
        "meta": {"priority": 2, "owner": {"name": "o"}},
        "none": None,
    }
    text = mapped_text(document, ["subject", "tags", "count", "open", "comments.text", "none", "meta"], 1000)
    assert text == "Printer\n\nurgent\n\nhardware\n\n3\n\ntrue\n\nfirst\n\nsecond"
    assert mapped_payload(document, ["meta.priority", "meta.owner.name", "tags", "comments.author", "missing"]) == {
        "meta": {"priority": 2, "owner": {"name": "o"}},
        "tags": ["urgent", "", "hardware"],
        "comments": {"author": ["b"]},
    }


def test_a_definition_sync_payload_names_the_sync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tickets, _ = load_from(monkeypatch, write(tmp_path, EXAMPLE))
    document = {"subject": "S", "content": ["a", "b"], "meta": {"priority": 5}, "status": "open"}
    text = text_of(document, tickets)
    payload = payload_of(document, tickets, mongo_id="1", text=text, version="v", model="m")
    assert text == "S\n\na\n\nb"
    assert payload["meta"] == {"priority": 5} and payload["sync"] == "tickets" and payload["source"] == "app.tickets"
    default = sync_of(settings_module.load(EmbedderSettings))
    assert "sync" not in payload_of({"subject": "S"}, default, mongo_id="1", text="S", version="v", model="m")


def test_chunking_is_set_per_sync_and_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHUNK_OVERLAP_TOKENS", "16")
    monkeypatch.setenv("MAX_DOCUMENT_CHARS", "90000")
    text = EXAMPLE.replace("qdrant_collection: tickets", "qdrant_collection: tickets\n    chunk_tokens: 128")
    text = text.replace("qdrant_collection: kb_articles", "qdrant_collection: kb_articles\n    chunk_tokens: 0")
    tickets, articles = load_from(monkeypatch, write(tmp_path, text))
    assert (tickets.chunk_tokens, tickets.chunk_overlap_tokens, tickets.max_document_chars) == (128, 16, 90_000)
    assert tickets.chunking and tickets.text_bound == 90_000
    assert articles.chunk_tokens == 0 and not articles.chunking and articles.text_bound == 8192
    worker = settings_for(settings_module.load(EmbedderSettings), tickets)
    assert (worker.chunk_tokens, worker.chunk_overlap_tokens, worker.max_document_chars) == (128, 16, 90_000)
    assert sync_of(worker) == tickets


def test_chunking_keys_are_checked_with_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = EXAMPLE.replace("qdrant_collection: tickets", "qdrant_collection: tickets\n    chunk_tokens: 20\n"
                           "    chunk_overlap_tokens: 20")  # fmt: skip
    text = text.replace("qdrant_collection: kb_articles", "qdrant_collection: kb_articles\n    max_document_chars: -1")
    problems = problems_of(monkeypatch, tmp_path, text)
    assert "sync 'tickets' (syncs[0]): key 'chunk_overlap_tokens' (20) must be below chunk_tokens (20)" in problems
    assert "sync 'articles' (syncs[1]): key 'max_document_chars' must be a whole number, 1 or more" in problems


def test_an_overlap_that_leaves_a_chunk_no_room_is_refused_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_TOKENS", "32")
    monkeypatch.setenv("CHUNK_OVERLAP_TOKENS", "32")
    with pytest.raises(ConfigurationError, match="CHUNK_OVERLAP_TOKENS=32 must be below CHUNK_TOKENS=32"):
        settings_module.load(EmbedderSettings)
