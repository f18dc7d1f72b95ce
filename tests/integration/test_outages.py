"""The consumer loop through outages users create: longer than CLAIM_IDLE_MS x MAX_DELIVERIES, with more workers than
batches, restarts in the middle, stalled workers, and a Redis that is full or read-only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.support.servers import BIN, Server, free_port, start_redis, wait_for
from vecsync import metrics
from vecsync.batch import Batch
from vecsync.consumer import StreamConsumer
from vecsync.consumer_groups import ensure_group
from vecsync.errors import TransientError
from vecsync.messages import DocumentChange
from vecsync.redis_client import connect
from vecsync.settings import ConsumerSettings

STREAM, GROUP, OUT = "in", "workers", "out"
# Short enough that an outage of a second or two is many times CLAIM_IDLE_MS x MAX_DELIVERIES.
CLAIM_IDLE_MS = 100
MAX_DELIVERIES = 2


def settings(name: str, **overrides: object) -> ConsumerSettings:
    values = {
        "consumer_name": name,
        "block_ms": 20,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "claim_idle_ms": CLAIM_IDLE_MS,
        "max_deliveries": MAX_DELIVERIES,
        **overrides,
    }
    return ConsumerSettings(**values)  # type: ignore[arg-type]


class Dependency:
    """A downstream service that is down until told otherwise, and counts what it really processed."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.called = threading.Event()
        self.processed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handler(self, batch: Batch) -> None:
        self.called.set()
        if not self.up.is_set():
            raise TransientError("the service is down")
        with self._lock:
            self.processed.update(entry.id for entry in batch.entries)
        for entry in batch.entries:
            batch.tx.xadd(OUT, entry.fields)


class Workers:
    """Consumers running in threads, as a scaled stage would."""

    def __init__(self, client: redis.Redis, handler: Callable[[Batch], None]) -> None:
        self.client = client
        self.handler = handler
        self.running: list[tuple[StreamConsumer, threading.Thread]] = []

    def start(self, name: str, **overrides: object) -> StreamConsumer:
        loop = StreamConsumer(
            self.client,
            stage="test",
            stream=STREAM,
            group=GROUP,
            handler=self.handler,
            settings=settings(name, **overrides),
        )
        thread = threading.Thread(target=loop.run, name=name, daemon=True)
        thread.start()
        self.running.append((loop, thread))
        return loop

    def stop(self, loop: StreamConsumer) -> None:
        for running, thread in self.running:
            if running is loop:
                loop.stop()
                thread.join(10)
                assert not thread.is_alive(), f"{loop.consumer} did not stop"

    def stop_all(self) -> None:
        for loop, _thread in self.running:
            loop.stop()
        for _loop, thread in self.running:
            thread.join(10)


@pytest.fixture
def workers(redis_client: redis.Redis) -> Iterator[Callable[[Callable[[Batch], None]], Workers]]:
    made: list[Workers] = []

    def make(handler: Callable[[Batch], None]) -> Workers:
        made.append(Workers(redis_client, handler))
        return made[-1]

    yield make
    for group in made:
        group.stop_all()


def add(client: redis.Redis, count: int) -> list[str]:
    return [client.xadd(STREAM, {"value": str(i)}) for i in range(count)]


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [fields for _id, fields in client.xrange(STREAM + ":dlq")]


def drained(client: redis.Redis, count: int) -> bool:
    return client.xlen(OUT) >= count and int(client.xpending(STREAM, GROUP)["pending"]) == 0


def test_a_long_outage_with_idle_workers_dead_letters_nothing_and_processes_each_entry_once(
    redis_client: redis.Redis, workers: Callable[[Callable[[Batch], None]], Workers]
) -> None:
    ids = add(redis_client, 5)
    service = Dependency()
    stage = workers(service.handler)
    for n in range(7):  # seven workers, one batch
        stage.start(f"worker-{n}")
    assert service.called.wait(5)
    # Down for many times CLAIM_IDLE_MS x MAX_DELIVERIES: the idle workers must not take the batch from the one
    # that is still retrying it.
    time.sleep(20 * CLAIM_IDLE_MS * MAX_DELIVERIES / 1000)
    assert dead_letters(redis_client) == []
    service.up.set()
    wait_for(lambda: drained(redis_client, 5), timeout=10, what="the backlog to drain")
    assert dead_letters(redis_client) == []
    assert service.processed == Counter(ids), "each entry is processed once"
    assert redis_client.xlen(OUT) == 5


@pytest.mark.parametrize("same_name", [True, False], ids=["same-name", "new-name"])
def test_restarts_during_an_outage_count_no_delivery(
    redis_client: redis.Redis, workers: Callable[[Callable[[Batch], None]], Workers], same_name: bool
) -> None:
    [entry_id] = add(redis_client, 1)
    service = Dependency()
    stage = workers(service.handler)
    for restart in range(MAX_DELIVERIES + 3):
        service.called.clear()
        loop = stage.start("worker" if same_name else f"worker-{restart}")
        assert service.called.wait(5)
        stage.stop(loop)  # SIGTERM while the service is down: the entry stays pending
    service.up.set()
    stage.start("worker" if same_name else "worker-last")
    wait_for(lambda: drained(redis_client, 1), timeout=10, what="the entry to be processed")
    assert dead_letters(redis_client) == []
    assert service.processed == Counter([entry_id])


def test_a_consumer_whose_loop_stalls_loses_its_entries_and_that_counts_as_a_delivery(
    redis_client: redis.Redis, workers: Callable[[Callable[[Batch], None]], Workers]
) -> None:
    add(redis_client, 1)
    release = threading.Event()
    deliveries: list[tuple[str, int]] = []

    def handler(batch: Batch) -> None:
        name = threading.current_thread().name
        deliveries.extend((name, entry.deliveries) for entry in batch.entries)
        if name == "stuck":
            release.wait(30)  # a call that never returns
            raise TransientError("gave up")
        for entry in batch.entries:
            batch.tx.xadd(OUT, entry.fields)

    stage = workers(handler)
    stuck = stage.start("stuck", stall_timeout_s=0.3)
    wait_for(lambda: deliveries, timeout=5, what="the stuck worker to take the entry")
    assert stuck.liveness.alive()
    stage.start("healthy")
    wait_for(lambda: redis_client.xlen(OUT) == 1, timeout=10, what="another worker to take the entry over")
    assert not stuck.liveness.alive(), "a stalled loop reports itself unhealthy"
    assert deliveries == [("stuck", 1), ("healthy", 2)]
    release.set()


def test_a_dead_consumer_loses_its_entries_after_claim_idle(
    redis_client: redis.Redis, workers: Callable[[Callable[[Batch], None]], Workers]
) -> None:
    add(redis_client, 3)
    # A consumer took the entries and was killed: nothing keeps them any more.
    ensure_group(redis_client, STREAM, GROUP)
    redis_client.xreadgroup(GROUP, "killed", {STREAM: ">"}, count=10)
    service = Dependency()
    service.up.set()
    workers(service.handler).start("survivor")
    wait_for(lambda: drained(redis_client, 3), timeout=10, what="the survivor to take the entries over")
    assert dead_letters(redis_client) == []


# Redis under pressure ---------------------------------------------------------


def refused(reason: str) -> float:
    return metrics.REDIS_REFUSED.labels(stage="test", reason=reason)._value.get()


def test_a_full_redis_is_waited_out_never_dead_lettered(
    redis_client: redis.Redis, workers: Callable[[Callable[[Batch], None]], Workers]
) -> None:
    add(redis_client, 20)
    before = refused("oom")
    service = Dependency()
    service.up.set()
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", str(used))  # full: every write that needs memory is refused
    try:
        loop = workers(service.handler).start("worker")
        wait_for(lambda: refused("oom") > before, timeout=10, what="the worker to meet the full Redis")
        time.sleep(10 * CLAIM_IDLE_MS * MAX_DELIVERIES / 1000)
        assert loop.liveness.alive()
        assert redis_client.xlen(OUT) == 0
    finally:
        redis_client.config_set("maxmemory", "0")
    wait_for(lambda: drained(redis_client, 20), timeout=10, what="the backlog to drain once Redis has room")
    assert dead_letters(redis_client) == []


@pytest.fixture
def replica(redis_server: Server, tmp_path: Path) -> Iterator[Server]:
    server = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(redis_server.port))
    yield server
    server.stop()


def test_a_read_only_replica_after_a_failover_is_waited_out(
    redis_client: redis.Redis, replica: Server, workers: Callable[[Callable[[Batch], None]], Workers]
) -> None:
    add(redis_client, 10)
    replica_client = connect(f"redis://127.0.0.1:{replica.port}/0")
    wait_for(lambda: replica_client.xlen(STREAM) == 10, timeout=10, what="the replica to sync")
    before = refused("readonly")
    service = Dependency()
    service.up.set()
    # The stage still talks to an address that now leads to a read-only replica.
    stage = Workers(replica_client, service.handler)
    stage.start("worker")
    try:
        wait_for(lambda: refused("readonly") > before, timeout=10, what="the worker to meet the read-only replica")
        replica_client.replicaof("NO", "ONE")  # the failover promotes it
        wait_for(lambda: drained(replica_client, 10), timeout=10, what="the backlog to drain on the new master")
        assert dead_letters(replica_client) == []
    finally:
        stage.stop_all()
        replica_client.close()


# Health that can fail -----------------------------------------------------------


class SilentServer:
    """Answers GETs (the worker's start-up probe) and never answers a POST: an embedding-api stuck in a call."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            if conn.recv(65536).startswith(b"GET"):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                conn.close()
            else:
                self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def healthz(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except requests.ConnectionError:
        return 0


def test_healthz_stays_up_while_retrying_and_fails_when_the_loop_is_stuck(
    redis_url: str, redis_client: redis.Redis
) -> None:
    change = DocumentChange(
        op="upsert", source="app.documents", mongo_id="d1", changed_at=time.time(), document={"subject": "s"}
    )
    redis_client.xadd("raw_document_changes", change.to_fields())
    api = SilentServer()
    port, down_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "METRICS_PORT": str(port),
        "EMBEDDING_URL": f"http://127.0.0.1:{down_port}",  # nothing listens: refused at once, retried
        "BACKOFF_INITIAL_S": "0.1",
        "BACKOFF_MAX_S": "0.5",
        "STALL_TIMEOUT_S": "2",
    }
    process = subprocess.Popen(
        [str(BIN / "vecsync-embedder-worker")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: healthz(port) == 200, timeout=30, what="a healthy worker")
        deadline = time.monotonic() + 4  # twice STALL_TIMEOUT_S of retrying against a service that is down
        while time.monotonic() < deadline:
            assert healthz(port) == 200, "a worker retrying through an outage is alive"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output

    env |= {"EMBEDDING_URL": f"http://127.0.0.1:{api.port}", "EMBEDDING_TIMEOUT_S": "600"}
    process = subprocess.Popen(
        [str(BIN / "vecsync-embedder-worker")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: api.accepted, timeout=30, what="the worker's call to the silent embedding-api")
        wait_for(lambda: healthz(port) == 503, timeout=10, what="/healthz to report the stuck loop")
    finally:
        process.kill()
        process.communicate(timeout=30)
        api.close()
