"""A small loopback HTTP server for tests (binds 127.0.0.1 only).

Routes map a path (without query string) to a `Route`: a fixed body, a content
type, and an optional list of failure statuses answered before the body (to
exercise retries: `Route(body, fail=[429, 500])` answers 429, then 500, then
200). Every request is logged, so tests can assert what was (not) fetched.

    with LoopbackServer({"/v.mp4": Route(data, "video/mp4")}) as srv:
        url = srv.url("/v.mp4")
        ...
        assert srv.count("/v.mp4") == 1
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    # Statuses answered (in order) before `status`/`body`; e.g. [429, 500].
    fail: list[int] = field(default_factory=list)
    # Optional dynamic handler: (method, path, headers, body) -> (status, content_type, body).
    handler: Callable[[str, str, dict[str, str], bytes], tuple[int, str, bytes]] | None = None


@dataclass
class LoggedRequest:
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


class LoopbackServer:
    """Threaded HTTP server on 127.0.0.1 with a random free port."""

    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._fail_left: dict[str, list[int]] = {p: list(r.fail) for p, r in self.routes.items()}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args, **kwargs):  # keep test output quiet
                pass

            def _serve(self, method: str) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                req_body = self.rfile.read(length) if length else b""
                status, ctype, body, extra = server._answer(method, path, dict(self.headers), req_body)
                with server._lock:
                    server.requests.append(LoggedRequest(method, path, status, dict(self.headers), req_body))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 (http.server API)
                self._serve("GET")

            def do_HEAD(self):  # noqa: N802
                self._serve("HEAD")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- answering ------------------------------------------------------------
    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes):
        route = self.routes.get(path)
        if route is None:
            return 404, "text/plain", b"not found", {}
        with self._lock:
            pending = self._fail_left.setdefault(path, list(route.fail))
            if pending:
                code = pending.pop(0)
                return code, "text/plain", f"error {code}".encode(), {"Retry-After": "0"}
        if route.handler is not None:
            status, ctype, data = route.handler(method, path, headers, body)
            return status, ctype, data, {}
        data, status, extra = route.body, route.status, {}
        rng = headers.get("Range") or headers.get("range")
        if rng and rng.startswith("bytes=") and status == 200:
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            if start >= len(data):
                return 416, "text/plain", b"", {"Content-Range": f"bytes */{len(data)}"}
            extra = {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"}
            data, status = data[start:end + 1], 206
        return status, route.content_type, data, extra

    # -- helpers ----------------------------------------------------------------
    @property
    def origin(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def count(self, path: str, method: str | None = None) -> int:
        """How many requests hit `path` (optionally only `method`)."""
        with self._lock:
            return sum(1 for r in self.requests if r.path == path and (method is None or r.method == method))

    def statuses(self, path: str) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if r.path == path]

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
