"""POST routes that answer only a caller holding the service's key: what a service adds to its HTTP port.

vecsync.runtime.MetricsServer serves /metrics and /healthz, open to Prometheus
and health checks, and hands every POST to the ``AuthenticatedRoutes`` it was
given. Here each request is checked for the key as a bearer token (401 without
it), its body read as JSON (400 otherwise), and given to its route (500 when
the route raises). The upserter adds its collection operations this way
(upserter.store_api).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from email.message import Message
from io import BufferedIOBase
from typing import Any

log = logging.getLogger(__name__)

# A POST route takes the decoded JSON body and returns (status, JSON-able body).
PostRoute = Callable[[Any], tuple[int, Any]]

# What goes back to the caller: the status, the content type and the body.
Reply = tuple[int, str, bytes]


class AuthenticatedRoutes:
    """POST routes by path, each answering only requests that carry ``key`` as 'Authorization: Bearer <key>'."""

    def __init__(self, routes: dict[str, PostRoute], key: str | None) -> None:
        if routes and not key:
            raise ValueError("POST routes need a key")
        self.routes = routes
        self._expected = f"Bearer {key}".encode()

    def answer(self, path: str, headers: Message, body: BufferedIOBase) -> Reply | None:
        """The reply to a POST of ``path`` (its query ignored) with ``headers`` and ``body``; None if no such route."""
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            return None
        given = headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            return _json(401, {"detail": "This route needs the service's key as 'Authorization: Bearer <key>'."})
        try:
            length = int(headers.get("Content-Length") or 0)
            request = json.loads(body.read(length) or b"null")
        except ValueError:
            return _json(400, {"detail": "The request body must be JSON."})
        try:
            status, result = route(request)
        except Exception as exc:
            log.exception("POST %s failed", path)
            status, result = 500, {"detail": f"{type(exc).__name__}: {exc}"}
        return _json(status, result)


def _json(status: int, body: Any) -> Reply:
    return status, "application/json", json.dumps(body).encode()
