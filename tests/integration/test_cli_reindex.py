"""`vecsync reindex` and the model change in `vecsync status`, against real Redis. The upserter's side (starting a
change, switching the name, dropping collections) is played by hand here, writing the records of vecsync.reindex
as the upserter does, from another thread where the command waits for it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.pipeline import Pipeline
from vecsync import reindex
from vecsync.cli import reindex as reindex_cli
from vecsync.cli.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context
from vecsync.cli.main import main
from vecsync.cli.settings import CliSettings
from vecsync.reindex import Phase, Reindex, Serving

OLD, NEW = "hash-384", "all-MiniLM-L6-v2"
NAME = "documents"


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reindex_cli, "POLL_S", 0.05)
    monkeypatch.setattr(reindex_cli, "PROGRESS_EVERY_S", 0.2)


def cli(client: redis.Redis, *argv: str, **overrides: Any) -> int:
    settings = CliSettings(**{"qdrant_collection": NAME, "embedding_model": NEW, **overrides})
    ctx = Context(settings, interactive=False, _redis=client)
    ctx.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the connection
    return main(list(argv), ctx)


def serve(client: redis.Redis, collection: str, model: str | None, name: str = NAME) -> Serving:
    serving = Serving(collection, model, 384, name)
    reindex.write_serving(client, serving)
    return serving


def start(client: redis.Redis, name: str = NAME, model: str = NEW) -> Reindex:
    """What the upserter does when the configured model differs from the served one."""
    served = reindex.read_serving(client, name)
    assert served is not None
    return reindex.start(client, name, model=model, dim=384, serving=served)


def switch(client: redis.Redis, change: Reindex) -> None:
    """What the upserter does once the new collection caught up."""
    assert reindex.end(client, change.alias, change.number, Phase.SWITCHED)
    reindex.write_serving(client, Serving(change.collection, change.model, change.dim, change.alias))


def in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the command did not write what the upserter waits for"
        time.sleep(0.02)


@pytest.fixture
def building(redis_client: redis.Redis) -> Reindex:
    """documents serves documents (hash-384) and change 1 builds documents-v1 of the configured model."""
    serve(redis_client, NAME, OLD)
    change = start(redis_client)
    reindex.record_fields(redis_client, NAME, {"total:default": 10})
    reindex.record_progress(redis_client, NAME, 4)
    return change


class TestShow:
    def test_prints_what_the_name_serves_the_configured_model_and_the_progress(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli(redis_client, "reindex") == EXIT_OK
        out = capsys.readouterr().out
        assert f"documents: serves documents ({OLD}); configured model {NEW}" in out
        assert f"change 1: building documents-v1 ({OLD} -> {NEW}): 4 of 10 documents embedded" in out
        assert "s left" in out

    def test_a_due_change_is_shown_as_due(self, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
        serve(redis_client, NAME, OLD)
        assert cli(redis_client, "reindex") == EXIT_OK
        assert f"a change to {NEW} is due" in capsys.readouterr().out

    def test_a_collection_of_two_syncs_is_shown_once(
        self, redis_client: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = tmp_path / "syncs.yaml"
        config.write_text(
            "syncs:\n"
            "  - {name: tickets, mongo_collection: tickets, text_fields: [subject], qdrant_collection: support,"
            f" embedding_model: {NEW}}}\n"
            "  - {name: emails, mongo_collection: emails, text_fields: [subject], qdrant_collection: support,"
            f" embedding_model: {NEW}}}\n"
            "  - {name: articles, mongo_collection: articles, text_fields: [title]}\n"
        )
        serve(redis_client, "support", OLD, name="support")
        assert cli(redis_client, "reindex", vecsync_config=config) == EXIT_OK
        lines = capsys.readouterr().out.splitlines()
        assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == ["support", "articles"]
        assert cli(redis_client, "reindex", "--sync", "emails", vecsync_config=config) == EXIT_OK
        assert capsys.readouterr().out.startswith(f"support: serves support ({OLD}); configured model {NEW}")


class TestWait:
    def test_returns_after_the_switch_with_progress_on_stderr(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        switched_at: list[float] = []

        def upserter() -> None:
            time.sleep(0.6)
            switched_at.append(time.monotonic())
            switch(redis_client, building)

        thread = in_thread(upserter)
        assert cli(redis_client, "reindex", "--wait") == EXIT_OK
        returned_at = time.monotonic()
        thread.join()
        assert switched_at and returned_at >= switched_at[0]
        captured = capsys.readouterr()
        assert f"documents now serves documents-v1 ({NEW})" in captured.out
        assert "building documents-v1" in captured.err  # a progress line while it waited

    def test_a_due_change_counts_as_running(self, redis_client: redis.Redis) -> None:
        serve(redis_client, NAME, OLD)
        switched_at: list[float] = []

        def upserter() -> None:
            time.sleep(0.5)  # not started yet: --wait must not take the missing change for an outcome
            change = start(redis_client)
            time.sleep(0.3)
            switched_at.append(time.monotonic())
            switch(redis_client, change)

        thread = in_thread(upserter)
        assert cli(redis_client, "reindex", "--wait") == EXIT_OK
        assert switched_at and time.monotonic() >= switched_at[0]
        thread.join()

    def test_an_abort_is_a_failure(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def upserter() -> None:
            time.sleep(0.3)
            reindex.end(redis_client, NAME, building.number, Phase.ABORTED, "Aborted by the test.")

        thread = in_thread(upserter)
        assert cli(redis_client, "reindex", "--wait") == EXIT_FAILED
        thread.join()
        err = capsys.readouterr().err
        assert f"the change to {NEW} ended without a switch" in err
        assert "aborted" in err and "Aborted by the test." in err
        assert f"still serves documents ({OLD})" in err and "--retry" in err

    def test_a_failure_recorded_before_is_a_failure_at_once(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        reindex.end(redis_client, NAME, building.number, Phase.FAILED, "The embedding-api does not serve the model.")
        assert cli(redis_client, "reindex", "--wait", "--timeout", "5") == EXIT_FAILED
        err = capsys.readouterr().err
        assert "failed" in err and "The embedding-api does not serve the model." in err

    def test_the_timeout_says_where_it_stood(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        started = time.monotonic()
        assert cli(redis_client, "reindex", "--wait", "--timeout", "0.3") == EXIT_FAILED
        assert 0.3 <= time.monotonic() - started < 5
        err = capsys.readouterr().err
        assert f"Timed out after 0.3 s waiting for documents to serve {NEW}" in err
        assert "4 of 10 documents embedded" in err

    def test_nothing_to_wait_for(self, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
        serve(redis_client, NAME, NEW)
        assert cli(redis_client, "reindex", "--wait") == EXIT_OK
        assert f"documents serves documents ({NEW}), the configured model already." in capsys.readouterr().out
        serve(redis_client, NAME, OLD)
        assert cli(redis_client, "reindex", "--wait", embedding_model=None) == EXIT_OK
        assert "no EMBEDDING_MODEL is configured" in capsys.readouterr().out


class TestAbort:
    def test_ends_the_build_and_prints_what_the_upserter_dropped(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def upserter() -> None:
            wait_until(lambda: redis_client.hget(reindex.reindex_key(NAME), "phase") == Phase.ABORTED.value)
            reindex.record_fields(redis_client, NAME, {"dropped": json.dumps(["documents-v1"])})

        thread = in_thread(upserter)
        assert cli(redis_client, "reindex", "--abort", "--yes") == EXIT_OK
        thread.join()
        out = capsys.readouterr().out
        assert "change 1 aborted" in out
        assert f"the upserter dropped documents-v1. documents still serves documents ({OLD}), untouched." in out
        change = reindex.read_reindex(redis_client, NAME)
        assert change is not None and change.phase is Phase.ABORTED and change.error == reindex_cli.ABORTED_BY_OPERATOR
        assert reindex.read_serving(redis_client, NAME) == Serving(NAME, OLD, 384, NAME)

    def test_nothing_building(self, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
        serve(redis_client, NAME, OLD)
        assert cli(redis_client, "reindex", "--abort", "--yes") == EXIT_FAILED
        assert "no model change is building (it has had no model change)" in capsys.readouterr().err

    def test_asks_first(self, redis_client: redis.Redis, building: Reindex) -> None:
        assert cli(redis_client, "reindex", "--abort") == EXIT_USAGE
        change = reindex.read_reindex(redis_client, NAME)
        assert change is not None and change.building

    def test_an_upserter_that_does_not_drop_in_time(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli(redis_client, "reindex", "--abort", "--yes", "--timeout", "0.2") == EXIT_FAILED
        assert "has not dropped documents-v1 within 0.2 s" in capsys.readouterr().err
        change = reindex.read_reindex(redis_client, NAME)
        assert change is not None and change.phase is Phase.ABORTED


class TestDropOld:
    def test_asks_the_upserter_and_prints_what_it_dropped(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        switch(redis_client, building)

        def upserter() -> None:
            wait_until(lambda: reindex.drop_old_requested(redis_client, NAME))
            reindex.record_fields(redis_client, NAME, {"dropped_old": json.dumps([NAME])})
            reindex.clear_drop_old(redis_client, NAME)

        thread = in_thread(upserter)
        assert cli(redis_client, "reindex", "--drop-old", "--yes") == EXIT_OK
        thread.join()
        assert f"the upserter dropped documents; it serves documents-v1 ({NEW})" in capsys.readouterr().out

    def test_refused_while_building(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli(redis_client, "reindex", "--drop-old", "--yes") == EXIT_FAILED
        assert "change 1 is building documents-v1" in capsys.readouterr().err
        assert not reindex.drop_old_requested(redis_client, NAME)


class TestRetry:
    def test_forgets_an_aborted_change_once_its_collection_was_dropped(
        self, redis_client: redis.Redis, building: Reindex, capsys: pytest.CaptureFixture[str]
    ) -> None:
        reindex.end(redis_client, NAME, building.number, Phase.ABORTED, "Aborted by the test.")
        assert cli(redis_client, "reindex", "--retry") == EXIT_FAILED
        assert "has not dropped documents-v1" in capsys.readouterr().err
        reindex.record_fields(redis_client, NAME, {"dropped": json.dumps(["documents-v1"])})
        assert cli(redis_client, "reindex", "--retry") == EXIT_OK
        assert f"The upserter starts a new change to {NEW}" in capsys.readouterr().out
        assert reindex.read_reindex(redis_client, NAME) is None
        assert start(redis_client).collection == "documents-v2"  # the counter was kept
        assert cli(redis_client, "reindex", "--retry") == EXIT_FAILED
        assert "nothing to retry: change 2" in capsys.readouterr().err


class TestStatus:
    def test_reports_the_model_change(
        self, pipeline: Pipeline, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        serve(redis_client, NAME, OLD)
        building = start(redis_client)
        reindex.record_fields(redis_client, NAME, {"total:default": 10})
        reindex.record_progress(redis_client, NAME, 4)
        assert status_cli(pipeline, "status", "--json") == EXIT_OK
        sync = json.loads(capsys.readouterr().out)["syncs"]["default"]
        assert sync["serving"] == {"collection": NAME, "model": OLD, "dim": 384}
        assert sync["embedding_model"] == NEW and sync["model_change_due"] is False
        change = sync["model_change"]
        assert {key: change[key] for key in ("number", "phase", "model", "from_model")} == {
            "number": 1,
            "phase": "building",
            "model": NEW,
            "from_model": OLD,
        }
        assert (change["collection"], change["from_collection"]) == ("documents-v1", NAME)
        assert (change["embedded"], change["total"]) == (4, 10)
        assert change["rate_per_s"] > 0 and change["eta_s"] == pytest.approx(6 / change["rate_per_s"])
        assert change["finished_at"] is None and change["error"] is None
        assert status_cli(pipeline, "status") == EXIT_OK
        out = capsys.readouterr().out
        assert f"  model: serves documents ({OLD}); configured {NEW}" in out
        assert f"  model change 1: building documents-v1 ({OLD} -> {NEW}): 4 of 10 documents embedded" in out
        switch(redis_client, building)
        assert status_cli(pipeline, "status") == EXIT_OK
        assert "documents is kept until `vecsync reindex --drop-old`" in capsys.readouterr().out

    def test_a_due_change_and_none(
        self, pipeline: Pipeline, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert status_cli(pipeline, "status", "--json", embedding_model=None) == EXIT_OK
        sync = json.loads(capsys.readouterr().out)["syncs"]["default"]
        assert (sync["serving"], sync["embedding_model"], sync["model_change"]) == (None, None, None)
        serve(redis_client, NAME, OLD)
        assert status_cli(pipeline, "status", "--json") == EXIT_OK
        assert json.loads(capsys.readouterr().out)["syncs"]["default"]["model_change_due"] is True


def status_cli(pipeline: Pipeline, *argv: str, **overrides: Any) -> int:
    settings = CliSettings(
        **{
            "redis_url": pipeline.redis_url,
            "mongo_uri": pipeline.mongo_uri,
            "mongo_database": pipeline.collection.database.name,
            "mongo_collection": pipeline.collection.name,
            "embedding_url": pipeline.embedding_url,
            "qdrant_collection": NAME,
            "embedding_model": NEW,
            **overrides,
        }
    )
    ctx = Context(settings, interactive=False, _redis=pipeline.redis_client, _collection=pipeline.collection)
    ctx._store = pipeline.store
    ctx.close = lambda: None  # type: ignore[method-assign]  # the fixtures own the connections
    return main(list(argv), ctx)
