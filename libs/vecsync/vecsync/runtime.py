"""Process plumbing every service shares: logging, signals, the /metrics and /healthz server, the exit codes,
and the run of a consumer stage as a service."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vecsync.authenticated_routes import AuthenticatedRoutes
from vecsync.backoff import Backoff
from vecsync.batch import Handler
from vecsync.consumer import StreamConsumer
from vecsync.errors import ConfigurationError, HistoryLost
from vecsync.metrics import LOOP_HEALTHY, WatchedStream, register_stream_stats
from vecsync.partitions import check_count
from vecsync.redaction import RedactingFormatter, redact
from vecsync.redis_client import connect
from vecsync.redis_errors import REDIS_UNAVAILABLE
from vecsync.settings import ConsumerSettings
from vecsync.sync import Sync

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_HISTORY_LOST = 3

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``, every line (tracebacks too) with its secrets masked (vecsync.redaction)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def stop_on_signals(stopping: threading.Event) -> None:
    """Set ``stopping`` on SIGTERM or SIGINT, so the service finishes its batch and exits 0."""

    def handle(signum: int, _frame: object) -> None:
        log.info("Received %s; finishing the current batch, then stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class MetricsServer:
    """Serves GET /metrics and /healthz on a background thread, and hands POSTs to the routes a service adds.

    /metrics and /healthz stay open, for Prometheus and health checks. ``detail`` is what /healthz adds to its
    answer, such as why a stage is paused (None: nothing to add). ``post_routes`` answer every POST, each only to
    a caller holding their key (vecsync.authenticated_routes); without them a POST gets 404.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        healthy: Callable[[], bool] = lambda: True,
        detail: Callable[[], str | None] = lambda: None,
        post_routes: AuthenticatedRoutes | None = None,
    ) -> None:
        handler = _make_handler(healthy, detail, post_routes)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"METRICS_PORT {port} on {host} is in use by another program: stop that program, or set METRICS_PORT "
                "to a free port."
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Serving /metrics and /healthz on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(
    healthy: Callable[[], bool],
    detail: Callable[[], str | None],
    post_routes: AuthenticatedRoutes | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest())
            elif path == "/healthz":
                ok, said = healthy(), detail()
                text = ("ok" if ok else "unhealthy") + (f"; {said}" if said else "")
                self._reply(200 if ok else 503, "text/plain", f"{text}\n".encode())
            else:
                self._reply(404, "text/plain", b"not found\n")

        def do_POST(self) -> None:
            reply = None if post_routes is None else post_routes.answer(self.path, self.headers, self.rfile)
            if reply is None:
                self._reply(404, "text/plain", b"not found\n")
            else:
                self._reply(*reply)

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def run_main(main: Callable[[], None]) -> None:
    """Run a service's main, turning the errors an operator must act on into one clear line and an exit code."""
    # Redacted here as well as by the log formatter: a settings error comes before logging is set up.
    try:
        main()
    except ConfigurationError as exc:
        logging.getLogger("vecsync").error("%s", redact(str(exc)))
        sys.exit(EXIT_CONFIG)
    except HistoryLost as exc:
        logging.getLogger("vecsync").error("%s", redact(str(exc)))
        sys.exit(EXIT_HISTORY_LOST)
    except Exception:  # noqa: BLE001 - a failure nobody expected: its traceback as Python prints it, secrets masked
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        sys.exit(1)


@dataclass(frozen=True)
class Lane:
    """One sync's share of a consumer stage: the stream its entries travel in, and how to build their handler.

    ``build_handler`` gets the Redis client and the stop event; it may wait for the stage's own dependency, and
    returns None when asked to stop meanwhile.
    """

    sync: Sync
    stream: str  # the sync's stream of the stage: sync.stage1_stream or sync.stage2_stream
    build_handler: Callable[[redis.Redis, threading.Event], Handler | None]


def serve_consumer(
    settings: ConsumerSettings,
    *,
    stage: str,
    group: str,
    lanes: Sequence[Lane],
    post_routes: AuthenticatedRoutes | None = None,
    pause_when_redis_full: bool = False,
    probe: Callable[[], None] | None = None,
) -> None:
    """Run one consumer stage as a service: signal handling, metrics server, the consumer loops.

    One consumer loop per sync (``lanes``, each on its own stream) and partition of its stream (STREAM_PARTITIONS),
    each on its own thread with its own blocking reads, so every process serves every sync and partition and none
    waits behind another: one sync's backlog or poison never stalls another's. Each lane's handler serves all its
    partitions; the metrics of each carry its stream and its ``sync``. ``probe`` is the stage's known-good call to its
    dependency (see StreamConsumer). /healthz answers 503 until the loops run, and
    whenever one has not come round for STALL_TIMEOUT_S (see Liveness). A loop
    paused on a misconfiguration is alive (200), and /healthz says why it waits.
    """
    stopping = threading.Event()
    stop_on_signals(stopping)
    consumers: list[StreamConsumer] = []

    def healthy() -> bool:
        return bool(consumers) and all(consumer.liveness.alive() for consumer in consumers)

    def detail() -> str | None:
        return "; ".join(f"paused: {consumer.paused}" for consumer in consumers if consumer.paused) or None

    LOOP_HEALTHY.labels(stage).set_function(healthy)
    server = MetricsServer(
        settings.metrics_host,
        settings.metrics_port,
        healthy=healthy,
        detail=detail,
        post_routes=post_routes,
    ).start()
    partitions = settings.partitions
    try:
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        if not wait_for_redis(client, stopping, Backoff(settings.backoff_initial_s, settings.backoff_max_s)):
            return
        # Both stages' streams of every sync served (the seed's names for the environment's sync).
        streams = [name for lane in lanes for name in (lane.sync.stage1_stream, lane.sync.stage2_stream)]
        check_count(client, list(dict.fromkeys(streams)), settings.stream_partitions)
        register_stream_stats(
            client,
            [WatchedStream(name, group, lane.sync.name) for lane in lanes for name in partitions.names(lane.stream)],
        )
        for lane in lanes:
            handler = lane.build_handler(client, stopping)
            if handler is None:
                return
            consumers.extend(
                StreamConsumer(
                    client,
                    stage=stage,
                    stream=partitions.name(lane.stream, partition),
                    group=group,
                    handler=handler,
                    settings=settings,
                    stopping=stopping,
                    pause_when_redis_full=pause_when_redis_full,
                    partition=partition,
                    probe=probe,
                    sync=lane.sync.name,
                )
                for partition in partitions.indexes()
            )
        names = [f"consumer-{consumer.context.sync}-{consumer.partition}" for consumer in consumers]
        run_all(consumers, stopping, names)
    finally:
        server.close()


class Loop(Protocol):
    """A service's main loop: a consumer of one sync's partition, or the producer of one sync."""

    def run(self) -> None: ...


def run_all(loops: Sequence[Loop], stopping: threading.Event, names: Sequence[str]) -> None:
    """Run the loops, each on its own thread named by ``names``, until stopped; one that raises stops the others,
    and its error is raised here once they have stopped. A single loop runs on the calling thread."""
    if len(loops) == 1:
        loops[0].run()
        return
    failures: list[BaseException] = []

    def run(loop: Loop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            failures.append(exc)
            stopping.set()

    threads = [threading.Thread(target=run, args=(loop,), name=name) for loop, name in zip(loops, names, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def wait_for_redis(client: redis.Redis, stopping: threading.Event, backoff: Backoff) -> bool:
    """Wait until Redis answers; False if asked to stop first. Refused credentials are a configuration error."""
    while not stopping.is_set():
        try:
            client.ping()
            return True
        except redis.AuthenticationError as exc:
            raise ConfigurationError(f"Redis refused the credentials in REDIS_URL: {exc}") from None
        except redis.ResponseError as exc:
            if any(code in str(exc) for code in ("NOAUTH", "WRONGPASS", "NOPERM")):
                raise ConfigurationError(f"Redis refused the credentials in REDIS_URL: {exc}") from None
            raise
        except REDIS_UNAVAILABLE as exc:
            log.warning("Redis is not reachable yet (%s); retrying", exc)
            backoff.wait(stopping)
    return False
