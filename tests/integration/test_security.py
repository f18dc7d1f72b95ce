"""Credentials: a service given wrong ones stops at start with a clear message that does not echo them."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.redis_acl import least_privilege_clients
from tests.support.servers import BIN, Server, free_port, start_redis, wait_for

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_redis(tmp_path_factory.mktemp("secured-redis"), "--requirepass", PASSWORD)
    yield server
    server.stop()


def worker(redis_url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": str(port), "BACKOFF_MAX_S": "1"}
    process = subprocess.Popen(
        [str(BIN / "vecsync-embedder-worker")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, port


@pytest.mark.parametrize("credentials", [":wrong-password@", ""], ids=["wrong password", "no password"])
def test_wrong_redis_credentials_stop_the_service_at_start(
    secured_redis: Server, tmp_path: Path, credentials: str
) -> None:
    process, _port = worker(f"redis://{credentials}127.0.0.1:{secured_redis.port}/0", tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "Redis refused the credentials in REDIS_URL" in output
    assert "wrong-password" not in output, "a secret was logged"


def test_the_right_password_works_and_is_never_logged(secured_redis: Server, tmp_path: Path) -> None:
    process, port = worker(f"redis://:{PASSWORD}@127.0.0.1:{secured_redis.port}/0", tmp_path)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, what="a healthy worker")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert PASSWORD not in output
    assert "redis://:***@127.0.0.1" in output


def test_each_service_runs_with_its_documented_least_privilege_redis_user(
    pipeline: Any, redis_client: Any, tmp_path: Path
) -> None:
    from producer.service import Producer
    from upserter.service import Upserter
    from vecsync.consumer import StreamConsumer
    from vecsync.partitions import check_count
    from vecsync.retention import trim

    with least_privilege_clients(redis_client, pipeline.redis_url) as clients:
        # The group is created by the operator (or the first consumer); do it as admin here, then drop admin rights.
        embedder_settings = pipeline.embedder_settings(trim_interval_s=0.001)
        upserter_settings = pipeline.upserter_settings(trim_interval_s=0.001, skip_unchanged_hint_points=2)
        # What every process checks at start-up (vecsync.runtime, producer.main): the first stores the number.
        for client in clients.values():
            check_count(client, embedder_settings.pipeline_streams(), embedder_settings.stream_partitions)

        def run_stages(*, through_an_outage: bool = False, trim_stage1: bool = False) -> None:
            Producer(pipeline.producer_settings(), clients["producer"], pipeline.collection).run(drain=True)
            embedder = dataclasses.replace(pipeline, redis_client=clients["embedder"]).embedder_consumer(
                trim_interval_s=0.001
            )
            if through_an_outage:
                hold_renew_and_hand_back_one_entry(embedder)
            embedder.run(drain=True)
            if trim_stage1:  # retention, run as the embedder does it, removes all but the newest change
                trim(clients["embedder"], "raw_document_changes", keep_count=1, keep_age_s=0)
            upserter = StreamConsumer(
                clients["upserter"],
                stage="upserter",
                stream="embedded_documents",
                group="qdrant_upserters",
                handler=Upserter(upserter_settings, clients["upserter"], pipeline.store, pipeline.collection).handle,
                settings=upserter_settings,
            )
            if through_an_outage:
                hold_renew_and_hand_back_one_entry(upserter)
            upserter.run(drain=True)

        pipeline.collection.insert_many([{"_id": f"d{i}", "subject": f"s {i}"} for i in range(5)])
        run_stages(through_an_outage=True)
        pipeline.collection.delete_one({"_id": "d4"})  # so that the upserter writes a tombstone too
        pipeline.collection.update_one({"_id": "d3"}, {"$set": {"owner": "Bob"}})  # and a payload-only change
        run_stages()
        pipeline.assert_matches_mongo()
        for stream in ("raw_document_changes", "embedded_documents"):
            assert redis_client.xlen(stream + ":dlq") == 0, f"a service lacked a permission on {stream}"
        assert redis_client.hlen("vecsync:upserter:tombstones:documents") == 1
        # The sweep of the tombstones reads every stream and dead-letter stream: the insert of d4 keeps its tombstone.
        upserter = Upserter(upserter_settings, clients["upserter"], pipeline.store, pipeline.collection)
        assert upserter.tombstone_sweep.run(0) == 0

        # A payload-only change whose point is gone, its stage 1 entry trimmed: the upserter reads the document from
        # MongoDB and publishes it beside the producer, which reads the producer's position.
        pipeline.store.recreate()
        pipeline.collection.update_one({"_id": "d0"}, {"$set": {"owner": "Cy"}})
        pipeline.collection.update_one({"_id": "d1"}, {"$set": {"subject": "s 1, edited"}})
        run_stages(trim_stage1=True)
        run_stages()
        assert pipeline.points()["d0"]["owner"] == "Cy"
        for stream in ("raw_document_changes", "embedded_documents"):
            assert redis_client.xlen(stream + ":dlq") == 0, f"a service lacked a permission on {stream}"


def test_a_model_change_runs_with_each_services_documented_redis_user(
    pipeline: Any, redis_client: Any, tmp_path: Path
) -> None:
    """A whole model change (vecsync.reindex) with the users of docs/security.md: the upserter records what the name
    serves, starts the build, switches and drops the old collection; the producer publishes the build's snapshot; the
    embedder-worker embeds for both collections and counts its progress. A refused command would dead-letter an
    entry, or leave the change building."""
    from producer.build_snapshot import BuildSnapshot
    from producer.service import Producer
    from tests.support.models_api import ModelsApi, ServedModel
    from upserter.model_change import ModelChange
    from upserter.named_collections import CollectionSpec, NamedCollections
    from upserter.service import Upserter
    from vecsync import reindex
    from vecsync.consumer import StreamConsumer
    from vecsync.reindex import Phase
    from vecsync.store.embedded_catalog import EmbeddedCatalog
    from vecsync.syncs import default_sync

    old, new = ServedModel("hash-8", 8, window=256), ServedModel("hash-4", 4, window=256)
    api = ModelsApi(old, new)
    folder = tmp_path / "collections"

    def stages(clients: dict[str, Any], model: ServedModel) -> Generator[None, None, None]:
        """The three stages configured with ``model``, as a restart with EMBEDDING_MODEL set gives them; each
        ``next()`` runs them once, producer first, the upserter's model-change check last."""
        producer_settings = pipeline.producer_settings().model_copy(update={"embedding_model": model.name})
        # The embedder-worker's stage, as its Redis user, with the model's settings.
        embedder_pipeline = dataclasses.replace(pipeline, redis_client=clients["embedder"])
        embedder_settings = {"embedding_url": api.url, "embedding_model": model.name, "embedding_dim": model.dim}
        upserter_settings = pipeline.upserter_settings(embedding_model=model.name, embedding_dim=model.dim)
        names = NamedCollections(EmbeddedCatalog(folder), {"documents": CollectionSpec((), None)}, model.dim)
        change = ModelChange(
            names,
            [default_sync(upserter_settings)],
            clients["upserter"],
            upserter_settings.partitions,
            stage1_group="embedding_processors",
            stage2_group="qdrant_upserters",
            holder="upserter-1",
        )
        change.record_serving()
        snapshot = BuildSnapshot(producer_settings, clients["producer"], pipeline.collection)
        try:
            while True:
                Producer(producer_settings, clients["producer"], pipeline.collection).run(drain=True)
                snapshot.publish_if_due()
                embedder_pipeline.embedder_consumer(**embedder_settings).run(drain=True)
                store = names.store("documents", names.serving_collection("documents"))
                upserter = Upserter(upserter_settings, clients["upserter"], store, pipeline.collection, names=names)
                StreamConsumer(
                    clients["upserter"],
                    stage="upserter",
                    stream="embedded_documents",
                    group="qdrant_upserters",
                    handler=upserter.handle,
                    settings=upserter_settings,
                ).run(drain=True)
                change.check("documents")
                yield
        finally:
            names.close()

    def served() -> Any:
        return reindex.read_serving(redis_client, "documents")

    def collections_and_payloads(collection: str) -> tuple[list[str], list[dict[str, Any]]]:
        """The physical collections, and the payloads of ``collection``, read once the stages closed the store."""
        catalog = EmbeddedCatalog(folder)
        try:
            payloads, _next = catalog.open(collection, dim=None).scroll(limit=100, offset=None)
            return catalog.collections(), list(payloads.values())
        finally:
            catalog.close()

    try:
        with least_privilege_clients(redis_client, pipeline.redis_url) as clients:
            pipeline.collection.insert_many([{"_id": f"d{i}", "subject": f"s {i}"} for i in range(6)])
            running = stages(clients, old)
            next(running)
            running.close()
            assert served() == reindex.Serving("documents", old.name, old.dim, "documents")

            running = stages(clients, new)
            next(running)  # the build starts at the end of the first round
            change = reindex.read_reindex(redis_client, "documents")
            assert change is not None and change.phase is Phase.BUILDING, change
            pipeline.collection.update_one({"_id": "d1"}, {"$set": {"subject": "edited during the build"}})
            pipeline.collection.delete_one({"_id": "d5"})
            for _round in range(10):
                next(running)
                if served().collection != "documents":
                    break
            change = reindex.read_reindex(redis_client, "documents")
            assert change is not None and change.phase is Phase.SWITCHED, change
            assert served() == reindex.Serving(change.target.collection, new.name, new.dim, "documents")
            assert change.embedded >= 5, "the embedder-worker's progress was not counted"
            reindex.request_drop_old(redis_client, "documents")
            next(running)
            running.close()
            assert not reindex.drop_old_requested(redis_client, "documents"), "the old collection was not dropped"
        collections, payloads = collections_and_payloads(change.target.collection)
        assert collections == [change.target.collection]
        texts = {payload["mongo_id"]: payload["text"] for payload in payloads if payload["model"] == new.name}
        assert texts == {document["_id"]: document["subject"] for document in pipeline.collection.find()}
        for stream in ("raw_document_changes", "embedded_documents"):
            assert redis_client.xlen(stream + ":dlq") == 0, f"a service lacked a permission on {stream}"
    finally:
        api.close()


def hold_renew_and_hand_back_one_entry(consumer: Any) -> None:
    """What a consumer does through an outage and a stop, under its own Redis user."""
    from vecsync.consumer_groups import ensure_group

    client, stream, group = consumer.client, consumer.stream, consumer.group
    ensure_group(client, stream, group)
    [(_stream, [(entry_id, _fields)])] = client.xreadgroup(group, consumer.consumer, {stream: ">"}, count=1)
    consumer.leases.hold([entry_id])
    consumer.leases.renew()
    assert not consumer.leases.lost([entry_id])
    consumer.leases.release([entry_id])


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection:UserWarning")
def test_a_qdrant_server_refusing_the_api_key_stops_the_upserter_with_a_clear_message() -> None:
    from qdrant_client import QdrantClient

    from tests.support.fake_api import FakeApi
    from vecsync.errors import ConfigurationError
    from vecsync.store.server import ServerStore

    qdrant = FakeApi()  # answers every request 401, as Qdrant does for a wrong api-key header
    qdrant.status, qdrant.body = 401, {"status": {"error": "Invalid api-key"}}
    try:
        client = QdrantClient(url=qdrant.url, api_key="wrong-key", timeout=5, check_compatibility=False)
        store = ServerStore(client, "documents", 384)
        with pytest.raises(ConfigurationError, match="QDRANT_API_KEY") as error:
            store.ensure_collection()
        assert "wrong-key" not in str(error.value)
        assert qdrant.requests, "the client never reached the server"
    finally:
        qdrant.close()


def _post(url: str, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url, json=body, headers=headers, timeout=10)


class TestUpserterStoreRoutes:
    """The collection operations the embedded upserter serves for the CLI answer only a caller with its key."""

    def test_an_unauthenticated_caller_gets_401_and_the_collection_is_untouched(self, store: Any) -> None:
        from upserter.store_api import store_routes
        from vecsync.authenticated_routes import AuthenticatedRoutes
        from vecsync.cli.store import UpserterStore
        from vecsync.errors import ConfigurationError
        from vecsync.runtime import MetricsServer
        from vecsync.vectorstore import Point

        store.upsert([Point("00000000-0000-0000-0000-000000000001", [1.0] * 384, {"mongo_id": "a"})])
        server = MetricsServer("127.0.0.1", 0, post_routes=AuthenticatedRoutes(store_routes(store), "the-key")).start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            for path in ("/recreate", "/count", "/search", "/payloads", "/scroll"):
                assert _post(base + path, {}).status_code == 401, path
                assert _post(base + path, {}, key="not-the-key").status_code == 401, path
                assert _post(base + path, {"api_key": "the-key"}).status_code == 401, path  # only as a header
            assert store.count() == 1, "the collection was touched"
            assert requests.get(base + "/metrics", timeout=10).ok and requests.get(base + "/healthz", timeout=10).ok
            assert UpserterStore(base, "documents", 10, api_key="the-key").count() == 1
            with pytest.raises(ConfigurationError, match="UPSERTER_API_KEY") as error:
                UpserterStore(base, "documents", 10, api_key="not-the-key").count()
            assert "not-the-key" not in str(error.value)
        finally:
            server.close()

    def test_the_embedded_upserter_keeps_its_key_in_a_private_file_that_the_local_cli_reads(
        self, redis_url: str, tmp_path: Path
    ) -> None:
        from vecsync.cli.settings import CliSettings
        from vecsync.cli.store import UpserterStore, open_store

        port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": str(port), "DATA_DIR": str(tmp_path)}
        process = subprocess.Popen(
            [str(BIN / "vecsync-upserter")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, what="a healthy upserter")
            [key_file] = [path for path in tmp_path.iterdir() if "key" in path.name]
            assert key_file.stat().st_mode & 0o777 == 0o600
            assert _post(base + "/recreate", {}).status_code == 401
            store = open_store(CliSettings(redis_url=redis_url, data_dir=tmp_path, upserter_url=base))
            assert isinstance(store, UpserterStore) and store.count() == 0
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert key_file.read_text().strip() not in output, "the key was logged"
