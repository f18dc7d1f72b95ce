"""The upserter's Qdrant REST API (upserter.qdrant_rest) served over an embedded store in a temporary folder.

It stands in for a Qdrant server where the server implementation (vecsync.store.server, over qdrant-client's
REST layer) must run against Qdrant's own engine: the collection is the embedded one, every collection is
writable (no sync marks one as vecsync's), and the app runs in uvicorn on a thread of this process, on a free
port of 127.0.0.1 (no key unless ``keys`` gives them: this host's clients are served).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn

from tests.support.servers import free_port, wait_for
from upserter.qdrant_rest.app import RestKeys, create_app
from vecsync.store.embedded_catalog import EmbeddedCatalog


class RestApi:
    """The REST API over ``EmbeddedCatalog(folder)``, serving from ``start()`` until ``stop()``; by default no
    collection is synced and every one is writable."""

    def __init__(
        self,
        folder: Path,
        *,
        synced: Callable[[str], bool] = lambda name: False,
        writable: frozenset[str] = frozenset({"*"}),
        keys: RestKeys | None = None,
    ) -> None:
        self.catalog = EmbeddedCatalog(folder)
        self.port = free_port()
        app = create_app(self.catalog, keys or RestKeys(), synced=synced, writable=writable)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"rest-api-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RestApi:
        self._thread.start()
        wait_for(lambda: self._server.started or not self._thread.is_alive(), what="the REST API to start")
        if not self._server.started:
            self.catalog.close()
            raise RuntimeError(f"the REST API did not start on port {self.port} (see the log above)")
        return self

    def stop(self) -> None:
        """Stop serving (open connections are closed), then close the embedded store."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.catalog.close()
