"""The layer in front of every route: it refuses requests without the API key or over the body size limit, and
counts and times every answer."""

from __future__ import annotations

import hmac
import time

from fastapi import Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_api.metrics import REQUEST_DURATION, REQUESTS
from embedding_api.replies import error_response
from embedding_api.settings import EmbeddingApiSettings

# Open to anyone, key or not, and left out of the request metrics: health checks and Prometheus.
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def _authorized(path: str, headers: Headers, api_key: str | None) -> bool:
    """Whether the request may go on: always without a configured key, else only with the right bearer token."""
    if api_key is None or path in OPEN_PATHS:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class GuardAndMeasure:
    """Checks the API key and the body size before anything is read, and counts and times every answer.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper streams each response through extra tasks
    and queues, which measured as a large share of the cost of a single-text request.
    """

    def __init__(self, app: ASGIApp, settings: EmbeddingApiSettings, known_paths: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            rejection = self._rejection(path, Headers(scope=scope))
            if rejection is not None:
                await rejection(scope, receive, send_and_note_status)
            else:
                await self.app(scope, receive, send_and_note_status)
        finally:
            if path not in OPEN_PATHS:
                # Only known routes become label values: probing random paths must not grow the metrics unbounded.
                endpoint = path if path in self.known_paths else "other"
                REQUESTS.labels(endpoint, str(status)).inc()
                REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)

    def _rejection(self, path: str, headers: Headers) -> Response | None:
        if not _authorized(path, headers, self.settings.embedding_api_key):
            message = "Missing or wrong API key: send 'Authorization: Bearer <EMBEDDING_API_KEY>'."
            return error_response(path, 401, message, {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        limit = self.settings.max_request_bytes
        if length and length.isdigit() and int(length) > limit:
            return error_response(
                path, 413, f"The request body has {length} bytes; the limit is MAX_REQUEST_BYTES={limit}."
            )
        return None
