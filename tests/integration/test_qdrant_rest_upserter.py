"""The upserter serves Qdrant's REST API over its embedded store (QDRANT_REST_PORT): who may call it, what stops it
at start, and the seed's rebuild runbook through it on a running pipeline (issue 28, acceptance 3)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from tests.support.pipeline import Pipeline
from tests.support.rest_upserter import (
    Upserter,
    embed_stage_1,
    pipeline_environment,
    points_count,
    running_upserter,
    scrolled_points,
)
from tests.support.servers import BIN, Server, free_port, port_open, wait_for
from tests.support.stack import running_stack, stack_settings
from upserter.qdrant_rest.app import RestKeys, create_app
from upserter.settings import UpserterSettings
from vecsync.errors import ConfigurationError
from vecsync.store.embedded_catalog import EmbeddedCatalog
from vecsync_local.ports import Listener

READ_WRITE = "read-write-key-of-the-test"
READ_ONLY = "read-only-key-of-the-test"


def test_the_upserter_serves_qdrants_rest_api_on_its_port_and_stops_cleanly(redis_url: str, tmp_path: Path) -> None:
    with running_upserter(tmp_path / "data", redis_url) as upserter:
        upserter.wait_for_collection()
        listed = requests.get(upserter.base + "/collections", timeout=5)
        assert listed.status_code == 200, listed.text
        assert listed.json()["status"] == "ok"
        assert {"name": "documents"} in listed.json()["result"]["collections"]
        info = requests.get(upserter.base + "/collections/documents", timeout=5).json()["result"]
        assert info["points_count"] == 0 and info["config"]["params"]["vectors"]["size"] == 384
        code = upserter.stop()
        output = upserter.output()
    assert code == 0, output
    assert f"Serving Qdrant's REST API over the embedded store on {upserter.base}" in output
    assert not port_open(upserter.rest_port), "the port was left open"


def test_without_qdrant_rest_port_nothing_is_served(redis_url: str, tmp_path: Path) -> None:
    with running_upserter(tmp_path / "data", redis_url, QDRANT_REST_PORT="") as upserter:
        base = f"http://127.0.0.1:{upserter.metrics_port}"
        wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, timeout=60, what="a healthy upserter")
        assert not port_open(upserter.rest_port)
        assert "Qdrant's REST API" not in upserter.output()


@pytest.fixture(scope="module")
def upserter_with_keys(redis_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upserter]:
    # A database of its own: it runs beside the other tests' upserters, which must not share its streams.
    redis_url = f"redis://127.0.0.1:{redis_server.port}/9"
    keys = {"QDRANT_API_KEY": READ_WRITE, "QDRANT_READ_ONLY_API_KEY": READ_ONLY}
    with running_upserter(tmp_path_factory.mktemp("keys") / "data", redis_url, **keys) as upserter:
        upserter.wait_for_collection({"api-key": READ_ONLY})
        yield upserter


@pytest.mark.usefixtures("upserter_with_keys")
class TestKeys:
    """QDRANT_API_KEY reads and deletes, QDRANT_READ_ONLY_API_KEY only reads; as Qdrant takes them: the api-key
    header or a bearer token."""

    @pytest.fixture
    def upserter(self, upserter_with_keys: Upserter) -> Upserter:
        return upserter_with_keys

    def test_a_request_without_a_key_is_refused_with_401(self, upserter: Upserter) -> None:
        reply = requests.get(upserter.base + "/collections/documents", timeout=5)
        assert reply.status_code == 401
        assert "API key" in reply.json()["status"]["error"]

    @pytest.mark.parametrize(
        "headers",
        [{"api-key": "not-a-key-of-this-server"}, {"Authorization": "Bearer not-a-key-of-this-server"}],
        ids=["header", "bearer"],
    )
    def test_a_wrong_key_is_refused_with_401(self, upserter: Upserter, headers: dict[str, str]) -> None:
        reply = requests.get(upserter.base + "/collections/documents", headers=headers, timeout=5)
        assert reply.status_code == 401
        assert "Invalid API key" in reply.json()["status"]["error"]
        assert "not-a-key-of-this-server" not in reply.text

    @pytest.mark.parametrize(
        "headers",
        [
            {"api-key": READ_ONLY},
            {"Authorization": f"Bearer {READ_ONLY}"},
            {"api-key": READ_WRITE},
            {"Authorization": f"Bearer {READ_WRITE}"},
        ],
        ids=["read-only", "read-only-bearer", "read-write", "read-write-bearer"],
    )
    def test_either_key_reads(self, upserter: Upserter, headers: dict[str, str]) -> None:
        reply = requests.get(upserter.base + "/collections/documents", headers=headers, timeout=5)
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"]["points_count"] == 0

    def test_the_read_only_key_cannot_delete_the_collection(self, upserter: Upserter) -> None:
        reply = requests.delete(upserter.base + "/collections/documents", headers={"api-key": READ_ONLY}, timeout=5)
        assert reply.status_code == 403
        assert "Write access denied" in reply.json()["status"]["error"]
        exists = requests.get(upserter.base + "/collections/documents/exists", headers={"api-key": READ_ONLY})
        assert exists.json()["result"]["exists"] is True

    def test_the_keys_are_never_logged(self, upserter: Upserter) -> None:
        output = upserter.output()
        assert READ_WRITE not in output and READ_ONLY not in output


class TestWithoutAKey:
    """Without any key, only clients on the upserter's host are served: the app, given the client's address."""

    @pytest.fixture
    def catalog(self, tmp_path: Path) -> Iterator[EmbeddedCatalog]:
        catalog = EmbeddedCatalog(tmp_path / "qdrant")
        catalog.open("documents", dim=4)
        yield catalog
        catalog.close()

    @pytest.mark.parametrize("client", ["127.0.0.1", "::1"])
    def test_a_client_on_this_host_is_served(self, catalog: EmbeddedCatalog, client: str) -> None:
        app = create_app(catalog, RestKeys(), synced=lambda name: name == "documents")
        with TestClient(app, client=(client, 50000)) as http:
            reply = http.get("/collections/documents")
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"]["config"]["params"]["vectors"]["size"] == 4

    def test_a_client_elsewhere_is_refused_with_403(self, catalog: EmbeddedCatalog) -> None:
        app = create_app(catalog, RestKeys(), synced=lambda name: name == "documents")
        with TestClient(app, client=("192.0.2.10", 50000)) as http:
            reply = http.get("/collections/documents")
            deleted = http.delete("/collections/documents")
        assert reply.status_code == 403 and deleted.status_code == 403
        assert "QDRANT_API_KEY" in reply.json()["status"]["error"]
        assert "documents" in catalog.collections()

    def test_with_a_key_a_client_elsewhere_is_served(self, catalog: EmbeddedCatalog) -> None:
        app = create_app(catalog, RestKeys(read_only=READ_ONLY), synced=lambda name: name == "documents")
        with TestClient(app, client=("192.0.2.10", 50000)) as http:
            assert http.get("/collections/documents", headers={"api-key": READ_ONLY}).status_code == 200
            assert http.get("/collections/documents").status_code == 401


# --- what stops the upserter at start: one clear line, exit status 2 -------------------------------------------


def test_qdrant_rest_port_with_a_qdrant_server_is_a_configuration_error(redis_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATA_DIR": str(tmp_path),
        "METRICS_PORT": str(free_port()),
        "QDRANT_URL": f"http://127.0.0.1:{free_port()}",
        "QDRANT_REST_PORT": str(free_port()),
    }
    done = subprocess.run([str(BIN / "vecsync-upserter")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "QDRANT_REST_PORT" in done.stderr and "QDRANT_URL names a Qdrant server" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_rest_port_held_by_another_program_is_a_configuration_error(redis_url: str, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(tmp_path),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": str(free_port()),
            "QDRANT_REST_PORT": str(port),
        }
        done = subprocess.run([str(BIN / "vecsync-upserter")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"QDRANT_REST_PORT {port} on 127.0.0.1 is in use by another program" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_host_other_than_loopback_without_a_key_is_warned_of(redis_url: str, tmp_path: Path) -> None:
    with running_upserter(tmp_path / "data", redis_url, QDRANT_REST_HOST="0.0.0.0") as upserter:
        upserter.wait_for_collection()
        output = upserter.output()
    assert "QDRANT_REST_HOST is 0.0.0.0 but no QDRANT_API_KEY" in output, output
    assert "serves only clients on this host" in output


def test_the_settings_read_the_writable_collections_as_a_comma_separated_list() -> None:
    settings = UpserterSettings(qdrant_rest_writable_collections=" notes, scratch ,,")  # type: ignore[arg-type]
    assert settings.qdrant_rest_writable_collections == frozenset({"notes", "scratch"})
    assert UpserterSettings().qdrant_rest_writable_collections == frozenset()
    assert UpserterSettings().qdrant_rest_port is None and UpserterSettings().qdrant_rest_host == "127.0.0.1"
    assert "read-only" not in repr(UpserterSettings(qdrant_read_only_api_key="read-only-secret"))


# --- acceptance 3: refused writes change nothing; the rebuild runbook restores every point ------------------------


def test_an_outside_upsert_is_refused_and_deleting_then_replaying_stage_2_restores_every_point(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The producer and the embedder-worker run in this process; the upserter is a process of its own, with its
    store and REST API, as `make run` runs it."""
    settings = pipeline.upserter_settings()
    documents = [{"_id": f"d{i}", "subject": f"ticket {i}", "content": f"the text of ticket {i}"} for i in range(12)]
    pipeline.collection.insert_many(documents)
    embed_stage_1(pipeline)

    stage2 = [settings.partitions.name(settings.stage2_stream, p) for p in settings.partitions.indexes()]
    assert sum(pipeline.redis_client.xlen(stream) for stream in stage2) == 12, stage2
    with running_upserter(tmp_path / "upserter", pipeline.redis_url, **pipeline_environment(pipeline)) as upserter:
        upserter.wait_for_collection()
        wait_for(lambda: points_count(upserter.base) == 12, timeout=60, what=f"12 points:\n{upserter.output()}")
        before = scrolled_points(upserter.base)
        assert sorted(payload["mongo_id"] for payload in before.values()) == sorted(doc["_id"] for doc in documents)

        upsert = {"points": [{"id": 1, "vector": [0.1] * 384, "payload": {"mongo_id": "intruder"}}]}
        refused = requests.put(upserter.base + "/collections/documents/points", json=upsert, timeout=5)
        assert refused.status_code == 403, refused.text
        assert "version fence" in refused.json()["status"]["error"]
        assert scrolled_points(upserter.base) == before

        deleted = requests.delete(upserter.base + "/collections/documents", timeout=5)
        assert deleted.status_code == 200 and deleted.json()["result"] is True, deleted.text
        assert points_count(upserter.base) == 0  # made again at once, empty

        # The runbook's XGROUP DESTROY and CREATE ... 0, in one transaction: the running upserter recreates a
        # missing group itself (from 0 too), and must not find it gone between the two.
        client = pipeline.redis_client
        with client.pipeline(transaction=True) as transaction:
            for partition in settings.partitions.indexes():
                stream = settings.partitions.name(settings.stage2_stream, partition)
                transaction.xgroup_destroy(stream, settings.stage2_group)
                transaction.xgroup_create(stream, settings.stage2_group, id="0")
            transaction.execute()
        wait_for(lambda: points_count(upserter.base) == 12, timeout=60, what=f"12 points again:\n{upserter.output()}")
        assert scrolled_points(upserter.base) == before  # the same points, ids, versions and payloads
        code = upserter.stop()
    assert code == 0, upserter.output()


# --- make run: the upserter serves the REST API on QDRANT_REST_PORT (6333 by default), on this host -------------


def test_make_run_serves_the_rest_api_on_6333_of_this_host_by_default(tmp_path: Path) -> None:
    from vecsync_local.stack import LocalStack, LocalStackSettings

    assert LocalStackSettings().qdrant_rest_port == 6333
    stack = LocalStack(stack_settings(tmp_path / "data", qdrant_rest_port=6333))
    [upserter] = [child for child in stack._consumer_stages() if child.name == "upserter"]
    assert upserter.env["QDRANT_REST_PORT"] == "6333" and upserter.env["QDRANT_REST_HOST"] == "127.0.0.1"
    assert Listener(6333, "127.0.0.1", "the upserter's Qdrant REST API", "QDRANT_REST_PORT") in stack.listeners()


def test_make_run_serves_no_rest_api_where_qdrant_url_names_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vecsync_local.stack import LocalStack

    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:6333")
    stack = LocalStack(stack_settings(tmp_path / "data"))
    [upserter] = [child for child in stack._consumer_stages() if child.name == "upserter"]
    assert upserter.env["QDRANT_REST_PORT"] == ""
    assert all(listener.setting != "QDRANT_REST_PORT" for listener in stack.listeners())


def test_make_run_refuses_a_rest_port_another_program_holds_before_anything_starts(tmp_path: Path) -> None:
    from vecsync_local.stack import LocalStack

    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        stack = LocalStack(stack_settings(tmp_path / "data", qdrant_rest_port=port))
        with pytest.raises(ConfigurationError, match=rf"Port {port}, which the upserter's Qdrant REST API"):
            stack.start()
    assert not stack.servers and not stack.stages


def test_make_run_prints_the_rest_api_address_where_the_upserter_serves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = stack_settings(tmp_path / "data", embedding_backend="hash", embedder_workers=1)
    with running_stack(settings):
        printed = capsys.readouterr().out
        address = f"http://127.0.0.1:{settings.qdrant_rest_port}"
        assert f"Qdrant's REST API over the embedded collection on {address}" in printed, printed
        reply = requests.get(address + "/collections/documents/exists", timeout=10)
        assert reply.status_code == 200 and reply.json()["result"] == {"exists": True}, reply.text
