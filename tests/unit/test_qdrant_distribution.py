"""Qdrant's distribution settings and gRPC: QDRANT_SHARDS, QDRANT_REPLICATION_FACTOR, QDRANT_WRITE_CONSISTENCY,
QDRANT_PREFER_GRPC and QDRANT_GRPC_PORT.

No Qdrant server runs on these machines. The collection's creation is checked on qdrant-client's in-memory client,
which records the arguments a server would receive and reports them back as a server does. The gRPC path is checked
against a real gRPC server in this process that records each request and answers it with the status a Qdrant server
gives to a failure: the requests are real qdrant-client requests, the answers are not Qdrant's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import BaseModel
from qdrant_client import QdrantClient, models
from qdrant_client import grpc as qdrant_grpc
from qdrant_client.conversions.conversion import GrpcToRest

from upserter.settings import UpserterSettings
from vecsync import settings
from vecsync.errors import ConfigurationError, PermanentError, TransientError
from vecsync.store import server as server_store
from vecsync.store.server import ServerStore
from vecsync.vectorstore import CollectionMissing, Point

DISTRIBUTION = ("shard_number", "replication_factor", "write_consistency_factor")
NEW_SETTINGS = ("QDRANT_SHARDS", "QDRANT_REPLICATION_FACTOR", "QDRANT_WRITE_CONSISTENCY")


@pytest.fixture(autouse=True)
def _no_qdrant_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*NEW_SETTINGS, "QDRANT_URL", "QDRANT_PATH", "QDRANT_PREFER_GRPC", "QDRANT_GRPC_PORT"):
        monkeypatch.delenv(name, raising=False)


# --- Settings -------------------------------------------------------------------------------------------------------


def test_unset_means_the_servers_defaults_and_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    loaded = settings.load(UpserterSettings)
    assert (loaded.qdrant_shards, loaded.qdrant_replication_factor, loaded.qdrant_write_consistency) == (None,) * 3
    assert loaded.collection_distribution() == {}
    assert (loaded.qdrant_prefer_grpc, loaded.qdrant_grpc_port) == (False, 6334)


def test_distribution_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("qdrant_shards", "6")  # case-insensitive, like every setting
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY", "2")
    monkeypatch.setenv("QDRANT_PREFER_GRPC", "true")
    monkeypatch.setenv("QDRANT_GRPC_PORT", "16334")
    loaded = settings.load(UpserterSettings)
    assert loaded.collection_distribution() == {
        "shard_number": 6,
        "replication_factor": 2,
        "write_consistency_factor": 2,
    }
    assert (loaded.qdrant_prefer_grpc, loaded.qdrant_grpc_port) == (True, 16334)


def test_empty_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose.yaml passes them as ${QDRANT_SHARDS:-}: unset in .env arrives as an empty string.
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    for name in NEW_SETTINGS:
        monkeypatch.setenv(name, "")
    assert settings.load(UpserterSettings).collection_distribution() == {}


def test_empty_values_leave_the_embedded_store_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path))
    for name in NEW_SETTINGS:
        monkeypatch.setenv(name, "")
    assert settings.load(UpserterSettings).collection_distribution() == {}


@pytest.mark.parametrize("name", NEW_SETTINGS)
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_each_must_be_a_whole_number_from_one(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        settings.load(UpserterSettings)


def test_write_consistency_may_not_exceed_the_replication_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY", "3")
    with pytest.raises(ConfigurationError) as error:
        settings.load(UpserterSettings)
    message = str(error.value)
    assert "QDRANT_WRITE_CONSISTENCY (3)" in message and "QDRANT_REPLICATION_FACTOR (2)" in message
    monkeypatch.setenv("QDRANT_WRITE_CONSISTENCY", "2")
    assert settings.load(UpserterSettings).qdrant_write_consistency == 2


@pytest.mark.parametrize("name", NEW_SETTINGS)
def test_the_embedded_store_refuses_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigurationError, match=rf"{name} .*need QDRANT_URL"):
        settings.load(UpserterSettings)  # the embedded default: neither QDRANT_URL nor QDRANT_PATH
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match=rf"{name} .*need QDRANT_URL"):
        settings.load(UpserterSettings)


def test_the_upserter_refuses_to_start_with_them_on_the_embedded_store(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("QDRANT_")}
    env.update(QDRANT_SHARDS="6", DATA_DIR=str(tmp_path), REDIS_URL="redis://127.0.0.1:1/0")
    code = "from upserter.main import cli; cli()"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "QDRANT_SHARDS" in result.stderr and "need QDRANT_URL" in result.stderr
    assert not (tmp_path / "qdrant").exists(), "the store must not be opened"


# --- Creating the collection ------------------------------------------------------------------------------------------


class RecordingClient(QdrantClient):
    """The in-memory client, recording create_collection's arguments and reporting them back as a server does.

    The in-memory client itself reports None for the distribution; ``reported`` stands for what a server returns.
    """

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.created: list[dict[str, Any]] = []
        self.reported: dict[str, int] = {key: 1 for key in DISTRIBUTION}

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self.created.append(kwargs)
        self.reported.update({key: kwargs[key] for key in DISTRIBUTION if key in kwargs})
        return super().create_collection(collection_name, **kwargs)

    def get_collection(self, collection_name: str) -> models.CollectionInfo:
        info = super().get_collection(collection_name)
        info.config.params = info.config.params.model_copy(update=self.reported)
        return info


def _store(client: QdrantClient, **distribution: int) -> ServerStore:
    return ServerStore(client, "documents", 4, distribution=distribution)


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
def test_the_collection_is_created_with_the_settings_given_and_only_those() -> None:
    client = RecordingClient()
    _store(client, shard_number=6, replication_factor=2, write_consistency_factor=2).ensure_collection()
    [created] = client.created
    assert {key: created[key] for key in DISTRIBUTION} == {
        "shard_number": 6,
        "replication_factor": 2,
        "write_consistency_factor": 2,
    }
    assert created["vectors_config"] == models.VectorParams(size=4, distance=models.Distance.COSINE)

    client = RecordingClient()
    _store(client, shard_number=6).ensure_collection()
    [created] = client.created
    assert created["shard_number"] == 6
    assert "replication_factor" not in created and "write_consistency_factor" not in created

    client = RecordingClient()
    _store(client).ensure_collection()
    [created] = client.created
    assert not set(DISTRIBUTION) & set(created), "unset means the server's defaults: nothing is sent"


def test_connect_passes_the_settings_through(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    def recording_client(**kwargs: Any) -> QdrantClient:
        made.append(kwargs)
        return RecordingClient()

    monkeypatch.setattr(server_store, "QdrantClient", recording_client)
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_SHARDS", "6")
    monkeypatch.setenv("QDRANT_REPLICATION_FACTOR", "2")
    store = ServerStore.connect(settings.load(UpserterSettings))
    assert made[-1]["prefer_grpc"] is False
    assert store.distribution == {"shard_number": 6, "replication_factor": 2}

    monkeypatch.setenv("QDRANT_PREFER_GRPC", "true")
    monkeypatch.setenv("QDRANT_GRPC_PORT", "16334")
    ServerStore.connect(settings.load(UpserterSettings))
    assert made[-1]["url"] == "http://qdrant:6333"
    assert (made[-1]["prefer_grpc"], made[-1]["grpc_port"]) == (True, 16334)


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
def test_an_existing_collection_with_other_values_is_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = RecordingClient()
    _store(client).ensure_collection()
    client.reported = {"shard_number": 3, "replication_factor": 1, "write_consistency_factor": 1}
    with caplog.at_level(logging.WARNING, logger="vecsync.store.server"):
        _store(client, shard_number=6, replication_factor=2, write_consistency_factor=2).ensure_collection()
    assert len(client.created) == 1, "an existing collection is never recreated"
    warnings = {record.getMessage() for record in caplog.records if record.levelno == logging.WARNING}
    assert len(warnings) == 3
    shards = next(message for message in warnings if "QDRANT_SHARDS" in message)
    assert "has 3 shards" in shards and "QDRANT_SHARDS is 6" in shards
    assert "vecsync rebuild" in shards and "Qdrant Cloud" in shards
    replication = next(message for message in warnings if "QDRANT_REPLICATION_FACTOR" in message)
    assert "replication factor 1" in replication and "QDRANT_REPLICATION_FACTOR is 2" in replication
    assert "replicate_shard" in replication and "/collections/documents/cluster" in replication
    consistency = next(message for message in warnings if "QDRANT_WRITE_CONSISTENCY" in message)
    assert "write consistency factor 1" in consistency and "QDRANT_WRITE_CONSISTENCY is 2" in consistency
    assert "PATCH /collections/documents" in consistency


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
def test_an_existing_collection_that_matches_or_settings_left_unset_warn_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = RecordingClient()
    _store(client, shard_number=6, replication_factor=2).ensure_collection()
    with caplog.at_level(logging.WARNING, logger="vecsync.store.server"):
        _store(client, shard_number=6, replication_factor=2).ensure_collection()
        _store(client).ensure_collection()
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


# --- gRPC -----------------------------------------------------------------------------------------------------------


class GrpcServer:
    """A gRPC server on a local port that records every call and answers it with one status code."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.code = grpc.StatusCode.UNAVAILABLE
        self.details = "recorded"
        self.trailers: tuple[tuple[str, str], ...] = ()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers((self._Handler(self),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    class _Handler(grpc.GenericRpcHandler):
        def __init__(self, owner: GrpcServer) -> None:
            self.owner = owner

        def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            owner = self.owner

            def answer(request: bytes, context: grpc.ServicerContext) -> None:
                owner.calls.append((handler_call_details.method, request))
                if owner.trailers:
                    context.set_trailing_metadata(owner.trailers)
                context.abort(owner.code, owner.details)

            return grpc.unary_unary_rpc_method_handler(answer)

    def client(self) -> QdrantClient:
        # The REST port is closed: with prefer_grpc every call the store makes goes to the gRPC port.
        return QdrantClient(
            url="http://127.0.0.1:1", grpc_port=self.port, prefer_grpc=True, check_compatibility=False, timeout=5
        )

    def stop(self) -> None:
        self._server.stop(0)


@pytest.fixture
def grpc_server() -> Iterator[GrpcServer]:
    server = GrpcServer()
    yield server
    server.stop()


UPSERT_ID = "6f1d8c2e-1111-4a8e-9a5b-1234567890ab"
DELETE_ID = "7f1d8c2e-1111-4a8e-9a5b-1234567890ab"


def _fence_batch(store: ServerStore) -> None:
    store.write_if_newer(
        upserts=[Point(UPSERT_ID, [0.5, 0.25, 0.0, 1.0], {"version": "5-1", "text_sha256": "ab", "model": "m"})],
        payloads={UPSERT_ID: {"version": "6-0", "text_sha256": "ab", "model": "m"}},
        deletes={DELETE_ID: "7-3"},
    )


def _plain(value: Any) -> Any:
    """A model as plain data, without the empty fields that gRPC fills in (should=[]) and REST leaves None."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item not in (None, [], {})}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
def test_the_fences_conditions_go_over_grpc_unchanged(grpc_server: GrpcServer) -> None:
    sent_over_rest: list[models.UpdateOperation] = []
    rest_client = RecordingClient()
    batch_update_points = rest_client.batch_update_points

    def spy(collection_name: str, update_operations: list[models.UpdateOperation], **kwargs: Any) -> Any:
        sent_over_rest.extend(update_operations)
        return batch_update_points(collection_name, update_operations=update_operations, **kwargs)

    rest_client.batch_update_points = spy  # type: ignore[method-assign]
    rest_store = _store(rest_client)
    rest_store.ensure_collection()
    _fence_batch(rest_store)

    with pytest.raises(TransientError):
        _fence_batch(_store(grpc_server.client()))
    [(method, body)] = grpc_server.calls
    assert method == "/qdrant.Points/UpdateBatch"
    request = qdrant_grpc.UpdateBatchPoints.FromString(body)
    assert request.collection_name == "documents" and request.wait
    sent_over_grpc = [GrpcToRest.convert_points_update_operation(op) for op in request.operations]
    assert [_plain(op) for op in sent_over_grpc] == [_plain(op) for op in sent_over_rest]
    upsert = next(op for op in sent_over_grpc if isinstance(op, models.UpsertOperation))
    assert isinstance(upsert.upsert, models.PointsList) and upsert.upsert.update_filter is not None


@pytest.mark.parametrize(
    ("code", "details", "trailers", "expected"),
    [
        # What a Qdrant server answers, by its mapping of errors to gRPC codes.
        (
            grpc.StatusCode.INTERNAL,
            "Service internal error: The replica set for shard 3 on peer 1 does not have enough active replicas",
            (),
            TransientError,
        ),
        (grpc.StatusCode.UNAVAILABLE, "Shard temporarily unavailable: shard 2", (), TransientError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Timeout: Operation 'update' timed out", (), TransientError),
        (grpc.StatusCode.FAILED_PRECONDITION, "Storage locked: writes are disabled", (), TransientError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded: write rate limit", (), TransientError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Rate limiting exceeded", (("retry-after", "1"),), TransientError),
        (grpc.StatusCode.NOT_FOUND, "Not found: Collection `documents` doesn't exist!", (), CollectionMissing),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "Must provide an API key or an Authorization bearer token",
            (),
            ConfigurationError,
        ),
        (grpc.StatusCode.PERMISSION_DENIED, "Forbidden: read-only key", (), ConfigurationError),
        (grpc.StatusCode.INVALID_ARGUMENT, "Wrong input: Vector dimension error", (), PermanentError),
    ],
)
def test_grpc_failures_are_classed_as_their_http_equivalents(
    grpc_server: GrpcServer,
    code: grpc.StatusCode,
    details: str,
    trailers: tuple[tuple[str, str], ...],
    expected: type[Exception],
) -> None:
    grpc_server.code, grpc_server.details, grpc_server.trailers = code, details, trailers
    store = _store(grpc_server.client())
    with pytest.raises(expected) as error:
        _fence_batch(store)
    assert type(error.value) is expected
    with pytest.raises(expected):
        store.count()


def test_qdrant_unreachable_over_grpc_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = QdrantClient(
        url="http://127.0.0.1:1", grpc_port=closed_port, prefer_grpc=True, check_compatibility=False, timeout=5
    )
    with pytest.raises(TransientError, match="unreachable"):
        _store(client).count()


class _RateLimited(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps({"status": {"error": "Rate limiting exceeded: write rate limit"}, "time": 0}).encode()
        self.send_response(429)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_a_rate_limit_with_retry_after_over_rest_is_transient() -> None:
    # qdrant-client raises its own ResourceExhaustedResponse for a 429 with Retry-After, not UnexpectedResponse.
    http = HTTPServer(("127.0.0.1", 0), _RateLimited)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        client = QdrantClient(url=f"http://127.0.0.1:{http.server_port}", check_compatibility=False, timeout=5)
        with pytest.raises(TransientError, match="Rate limiting"):
            _fence_batch(_store(client))
    finally:
        http.shutdown()
        http.server_close()


# --- Write ordering ---------------------------------------------------------------------------------------------------


RECORDED_PATHS: list[str] = []


class _Recorded(BaseHTTPRequestHandler):
    """Answers every write as a Qdrant server answers a completed one, recording its path and query string."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        RECORDED_PATHS.append(self.path)
        done = {"operation_id": 1, "status": "completed"}
        result = [done] * 3 if self.path.startswith("/collections/documents/points/batch") else done
        body = json.dumps({"result": result, "status": "ok", "time": 0})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_PUT(self) -> None:  # an upsert
        self.do_POST()

    def log_message(self, *_args: Any) -> None:
        pass


def test_the_fences_writes_ask_for_strong_ordering_over_rest() -> None:
    # A payload-only write applies only where the replica holds the text_sha256 and model of the upsert before it:
    # a replica that saw the two in the other order would skip it for good. Strong ordering makes every replica
    # apply a shard's writes in one order.
    RECORDED_PATHS.clear()
    http = HTTPServer(("127.0.0.1", 0), _Recorded)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        client = QdrantClient(url=f"http://127.0.0.1:{http.server_port}", check_compatibility=False, timeout=5)
        store = _store(client)
        _fence_batch(store)
        # The tools' unconditional writes too, so that they take their place in the same order on every replica.
        store.upsert([Point(UPSERT_ID, [0.5, 0.25, 0.0, 1.0], {"version": "8-0"})])
        store.delete([DELETE_ID])
    finally:
        http.shutdown()
        http.server_close()
    routes = [path.partition("?")[0] for path in RECORDED_PATHS]
    assert routes == [
        "/collections/documents/points/batch",
        "/collections/documents/points",
        "/collections/documents/points/delete",
    ]
    for path in RECORDED_PATHS:
        query = path.partition("?")[2].split("&")
        assert "ordering=strong" in query and "wait=true" in query, path


def test_the_fences_writes_ask_for_strong_ordering_over_grpc(grpc_server: GrpcServer) -> None:
    with pytest.raises(TransientError):
        _fence_batch(_store(grpc_server.client()))
    [(_method, body)] = grpc_server.calls
    request = qdrant_grpc.UpdateBatchPoints.FromString(body)
    assert request.HasField("ordering") and request.ordering.type == qdrant_grpc.WriteOrderingType.Strong
