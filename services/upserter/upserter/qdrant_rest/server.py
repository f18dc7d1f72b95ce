"""Serve the Qdrant REST API (upserter.qdrant_rest.app) with uvicorn on a thread of the upserter's own.

The port is bound here, on the calling thread, before the thread starts: a port in use is then a configuration
error the upserter stops on (exit status 2, naming QDRANT_REST_PORT), not a log line of a thread that died.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from vecsync.errors import ConfigurationError

log = logging.getLogger("vecsync.upserter")

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


class RestServer:
    """``app`` served on ``host``:``port`` (0: a free port) until ``close``."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._socket = _bind(host, port)
        config = uvicorn.Config(
            app,
            log_level="warning",
            # The process's logging stays as vecsync set it (its format, secrets masked): uvicorn configures none.
            log_config=None,
            access_log=False,
            # X-Forwarded-For is believed only from a proxy on this host, so clients behind it are not taken for
            # loopback clients (served without a key).
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="qdrant-rest", daemon=True)
        self.host = host
        self.port = int(self._socket.getsockname()[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> RestServer:
        """Start serving, and return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"Qdrant's REST API on {self.address} did not start within {STARTUP_TIMEOUT_S} s")
        log.info("Serving Qdrant's REST API over the embedded store on %s", self.address)
        return self

    def close(self) -> None:
        """Stop serving: requests in flight finish (for a few seconds at most), then the port is released."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(SHUTDOWN_TIMEOUT_S)
        self._socket.close()

    def _run(self) -> None:
        # A loop of this thread's own: uvicorn installs no signal handlers off the main thread, so the upserter's
        # own handlers (SIGTERM, SIGINT) stay in charge and stop this server through close().
        asyncio.run(self._server.serve(sockets=[self._socket]))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; ConfigurationError naming the setting where it cannot be had."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"QDRANT_REST_HOST {host!r} is not an address of this host ({exc}): set it to 127.0.0.1 (this host "
            "only) or to an address of one of its network interfaces."
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"QDRANT_REST_PORT {port} on {host} is in use by another program (a Qdrant server?): stop that "
                "program, or set QDRANT_REST_PORT to a free port."
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigurationError(
                f"QDRANT_REST_HOST {host!r} is not an address of this host: set it to 127.0.0.1 (this host only) "
                "or to an address of one of its network interfaces."
            ) from None
        raise
    return sock
