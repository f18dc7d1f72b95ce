"""SPARSE_MODEL and a sync's sparse_model: read from the environment and the definition file, checked at load, and
carried into each stage's settings (hybrid search, docs/design.md)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from embedder_worker.settings import EmbedderSettings
from producer.settings import ProducerSettings
from upserter.settings import UpserterSettings
from vecsync import settings as settings_module
from vecsync.cli.context import EXIT_USAGE
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.errors import ConfigurationError
from vecsync.settings import TextSettings
from vecsync.sync import Sync
from vecsync.syncs import default_sync, load_syncs, settings_for, sync_of

# Every stage's settings read the text settings, SPARSE_MODEL among them.
TEXT_SETTINGS: list[type[TextSettings]] = [CliSettings, UpserterSettings, EmbedderSettings, ProducerSettings]

TWO_SYNCS = """
syncs:
  - name: tickets
    mongo_collection: tickets
    text_fields: [subject, content]
    qdrant_collection: tickets
    {tickets}
  - name: articles
    mongo_database: kb
    mongo_collection: articles
    text_fields: [title]
    qdrant_collection: kb_articles
    {articles}
"""


@pytest.fixture(autouse=True)
def no_sparse_model_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the default (dense vectors only), whatever the shell that runs the tests holds."""
    for name in ("SPARSE_MODEL", "VECSYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def definitions(tmp_path: Path, text: str, tickets: str = "", articles: str = "") -> Path:
    """A definition file of two syncs, each with the extra key lines given (``sparse_model: bm25``, say)."""
    path = tmp_path / "syncs.yaml"
    path.write_text(textwrap.dedent(text).format(tickets=tickets, articles=articles))
    return path


def syncs_of(monkeypatch: pytest.MonkeyPatch, path: Path) -> dict[str, Sync]:
    monkeypatch.setenv("VECSYNC_CONFIG", str(path))
    return {sync.name: sync for sync in load_syncs(settings_module.load(UpserterSettings))}


def problems_of(monkeypatch: pytest.MonkeyPatch, path: Path) -> str:
    with pytest.raises(ConfigurationError) as error:
        syncs_of(monkeypatch, path)
    return str(error.value)


class TestTheEnvironment:
    @pytest.mark.parametrize("settings_class", TEXT_SETTINGS, ids=lambda cls: cls.__name__)
    def test_sparse_model_bm25_is_read(
        self, monkeypatch: pytest.MonkeyPatch, settings_class: type[TextSettings]
    ) -> None:
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        assert settings_module.load(settings_class).sparse_model == "bm25"

    @pytest.mark.parametrize("settings_class", TEXT_SETTINGS, ids=lambda cls: cls.__name__)
    def test_unset_or_empty_is_dense_only(
        self, monkeypatch: pytest.MonkeyPatch, settings_class: type[TextSettings]
    ) -> None:
        assert settings_module.load(settings_class).sparse_model is None
        monkeypatch.setenv("SPARSE_MODEL", "")  # ${SPARSE_MODEL:-} in compose.yaml
        assert settings_module.load(settings_class).sparse_model is None

    @pytest.mark.parametrize("value", ["splade", "dense"])
    def test_an_unknown_model_is_refused_at_load_naming_the_variable_and_the_models(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("SPARSE_MODEL", value)
        for settings_class in TEXT_SETTINGS:
            with pytest.raises(ConfigurationError) as error:
                settings_module.load(settings_class)
            said = str(error.value)
            assert "SPARSE_MODEL" in said and repr(value) in said, said
            assert "it must be one of bm25, or empty for dense vectors only" in said, said

    def test_the_cli_stops_with_exit_2_on_an_unknown_model(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Nothing listens at these: the CLI must stop before it connects to anything.
        monkeypatch.setenv("EMBEDDING_URL", "http://127.0.0.1:1")
        monkeypatch.setenv("UPSERTER_URL", "http://127.0.0.1:1")
        monkeypatch.setenv("SPARSE_MODEL", "splade")
        assert main(["search", "ORD-10007-KX", "--mode", "sparse"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: Invalid configuration: SPARSE_MODEL") and "'splade'" in err, err
        assert "bm25" in err and "Traceback" not in err

    def test_the_environments_sync_carries_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        loaded = settings_module.load(CliSettings)
        assert default_sync(loaded).sparse_model == "bm25"
        (sync,) = load_syncs(loaded)
        assert sync.name == "default" and sync.sparse_model == "bm25"
        assert sync_of(loaded).sparse_model == "bm25"
        monkeypatch.setenv("SPARSE_MODEL", "")
        (sync,) = load_syncs(settings_module.load(CliSettings))
        assert sync.sparse_model is None


class TestTheDefinitionFile:
    def test_a_sync_sets_its_own_and_the_others_inherit_the_environments(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        path = definitions(tmp_path, TWO_SYNCS, tickets="sparse_model: bm25")
        syncs = syncs_of(monkeypatch, path)
        assert (syncs["tickets"].sparse_model, syncs["articles"].sparse_model) == ("bm25", None)
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        syncs = syncs_of(monkeypatch, definitions(tmp_path, TWO_SYNCS))
        assert (syncs["tickets"].sparse_model, syncs["articles"].sparse_model) == ("bm25", "bm25")

    @pytest.mark.parametrize("none", ['sparse_model: ""', "sparse_model: null", "sparse_model:"])
    def test_an_empty_or_null_model_is_none_even_where_the_environment_sets_one(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, none: str
    ) -> None:
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        syncs = syncs_of(monkeypatch, definitions(tmp_path, TWO_SYNCS, articles=none))
        assert (syncs["tickets"].sparse_model, syncs["articles"].sparse_model) == ("bm25", None)

    @pytest.mark.parametrize("value", ["splade", "5", "[bm25]"])
    def test_an_unknown_model_is_refused_naming_file_sync_and_key(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
    ) -> None:
        path = definitions(tmp_path, TWO_SYNCS, articles=f"sparse_model: {value}")
        said = problems_of(monkeypatch, path)
        assert str(path) in said, said
        assert (
            "sync 'articles' (syncs[1]): key 'sparse_model' must be one of bm25, or empty for dense vectors only"
            in said
        )
        assert "sync 'tickets'" not in said, "only the sync at fault is named"

    def test_syncs_sharing_a_collection_must_agree_on_it(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        shared = TWO_SYNCS.replace("qdrant_collection: kb_articles", "qdrant_collection: tickets")
        path = definitions(tmp_path, shared, tickets="sparse_model: bm25")
        said = problems_of(monkeypatch, path)
        assert str(path) in said, said
        assert "syncs 'tickets' and 'articles' share Qdrant collection 'tickets'" in said, said
        assert "sparse_model bm25 and none" in said, said
        # The same model on both, written or inherited, is one collection's vectors.
        syncs = syncs_of(
            monkeypatch, definitions(tmp_path, shared, tickets="sparse_model: bm25", articles="sparse_model: bm25")
        )
        assert {sync.sparse_model for sync in syncs.values()} == {"bm25"}
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        syncs = syncs_of(monkeypatch, definitions(tmp_path, shared, tickets="sparse_model: bm25"))
        assert {sync.sparse_model for sync in syncs.values()} == {"bm25"}
        # One that inherits bm25 beside one that turns it off: refused too.
        said = problems_of(monkeypatch, definitions(tmp_path, shared, articles='sparse_model: ""'))
        assert "syncs 'tickets' and 'articles' share Qdrant collection 'tickets'" in said, said

    @pytest.mark.parametrize("settings_class", TEXT_SETTINGS, ids=lambda cls: cls.__name__)
    def test_settings_for_a_sync_carry_its_model(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings_class: type[TextSettings]
    ) -> None:
        syncs = syncs_of(monkeypatch, definitions(tmp_path, TWO_SYNCS, tickets="sparse_model: bm25"))
        environment = settings_module.load(settings_class)
        tickets = settings_for(environment, syncs["tickets"])
        assert tickets.sparse_model == "bm25" and sync_of(tickets) is syncs["tickets"]
        # A sync without one gets none, where the environment sets one.
        monkeypatch.setenv("SPARSE_MODEL", "bm25")
        environment = settings_module.load(settings_class)
        assert environment.sparse_model == "bm25"
        articles = settings_for(environment, syncs["articles"])
        assert articles.sparse_model is None and sync_of(articles).sparse_model is None
