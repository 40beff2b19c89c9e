"""A fault-injecting HTTP proxy on 127.0.0.1: forwards to an S3 endpoint, failing a seeded share of requests."""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "slowdown", "reset", "truncate")
ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
             "<RequestId>fault-proxy</RequestId></Error>")
ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FaultProxy:
    """Forward every request to `upstream`; with probability `rate` (seeded) answer it instead with a 500, a 503,
    a SlowDown, a reset connection, or (a GET with a body) the headers and half the body, then a reset.

    `burst` first requests all fail (the kinds in turn, a cut-off body only for a GET): an outage.
    `faults` counts what was injected, `forwarded` the requests passed through. Use as a context manager;
    `url` is the proxy's endpoint. A fault is decided before the request reaches upstream, except `truncate`,
    which forwards the request and cuts the answer.
    """

    def __init__(self, upstream: str, rate: float = 0.3, seed: int = 0, kinds: tuple[str, ...] = FAULTS,
                 burst: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.rate, self.kinds, self.burst = rate, kinds, burst
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter = Counter()
        self.forwarded = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def draw(self, method: str) -> str | None:
        """The fault for the next request, or None (forward it)."""
        with self.lock:
            kinds = [k for k in self.kinds if k != "truncate" or method == "GET"]
            if self.burst > 0 and kinds:
                self.burst -= 1
                return kinds[self.burst % len(kinds)]
            if self.random.random() >= self.rate:
                return None
            return self.random.choice(kinds) if kinds else None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                self.close_connection = True
                try:  # RST rather than FIN: the client sees a dropped connection
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.draw(self.command)
                if fault is not None and fault != "truncate":
                    with proxy.lock:
                        proxy.faults[fault] += 1
                    if fault == "reset":
                        self._reset()
                        return
                    status, code, message = ERRORS[fault]
                    payload = ERROR_XML.format(code=code, message=message).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    with proxy.lock:
                        proxy.forwarded += 1
                    cut = fault == "truncate" and len(data) > 1
                    if cut:
                        with proxy.lock:
                            proxy.faults[fault] += 1
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data[: len(data) // 2] if cut else data)
                    if cut:
                        self.wfile.flush()
                        self._reset()
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
