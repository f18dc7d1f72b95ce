"""An embedding-api stand-in that answers whatever a test sets and records what it was sent."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vecsync.chunking import word_spans

# The window of the model the stand-in plays, in tokens.
MAX_TOKENS = 256

# Decides one answer from (method, path, JSON body): a status and a body, or None to close the connection unanswered.
Answer = Callable[[str, str, object], "tuple[int, object] | None"]


class FakeApi:
    """Answers every request with ``status``, ``headers`` and ``body``; keeps each (method, path, JSON body).

    With ``answer`` set, it decides each answer instead, and may reset the connection (an API that crashes on a
    request, or a proxy that drops it).
    """

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.status = 200
        self.body: object = {}
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, str, object]] = []
        # POST /chunk is answered as the embedding-api's hash backend answers it, whatever else is set, and kept
        # apart from ``requests``: the stand-in fails or answers embedding requests, the worker chunks before them.
        self.chunks = True
        self.chunk_requests: list[object] = []
        self.authorization: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer("GET", None)

            def do_POST(self) -> None:
                self._answer("POST", json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def _answer(self, method: str, received: object) -> None:
                if method == "POST" and self.path == "/chunk" and fake.chunks:
                    fake.chunk_requests.append(received)
                    self._send(200, _chunked(received))
                    return
                fake.requests.append((method, self.path, received))
                fake.authorization = self.headers.get("Authorization")
                status, body = fake.status, fake.body
                if fake.answer is not None:
                    decided = fake.answer(method, self.path, received)
                    if decided is None:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        return  # closed with a reset, unanswered
                    status, body = decided
                self._send(status, body)

            def _send(self, status: int, body: object) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in fake.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chunked(request: Any) -> dict[str, Any]:
    """The answer of the hash backend's POST /chunk: texts split by word count, two tokens less for the specials."""
    tokens = request.get("tokens") or MAX_TOKENS
    spans = [word_spans(text, tokens - 2, request.get("overlap", 0)) for text in request["texts"]]
    return {"model": "fake", "tokens": tokens, "max_tokens": MAX_TOKENS, "spans": spans}
