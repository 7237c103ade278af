"""A webhook endpoint for finish-hook tests: records each POST's JSON body."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import orjson
import pytest


class HookReceiver:
    """A webhook endpoint on 127.0.0.5: answers the first POST with 503, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.answers: list[int] = []
        self.got = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = 503 if not receiver.answers else 200
                receiver.answers.append(code)
                receiver.bodies.append(orjson.loads(body))
                self.send_response(code)
                self.end_headers()
                if code == 200:
                    receiver.got.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.5", 0), Handler)
        self.url = f"http://127.0.0.5:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    receiver.close()
