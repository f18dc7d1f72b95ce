"""An embedding-api stand-in that answers whatever a test sets and records what it was sent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeApi:
    """Answers every request with ``status``, ``headers`` and ``body``; keeps each (method, path, JSON body)."""

    def __init__(self) -> None:
        self.status = 200
        self.body: object = {}
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, str, object]] = []
        self.authorization: str | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer("GET", None)

            def do_POST(self) -> None:
                self._answer("POST", json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def _answer(self, method: str, received: object) -> None:
                fake.requests.append((method, self.path, received))
                fake.authorization = self.headers.get("Authorization")
                payload = json.dumps(fake.body).encode()
                self.send_response(fake.status)
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
