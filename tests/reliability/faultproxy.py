"""A fault-injecting reverse proxy on loopback, in front of the GCS emulator or moto's S3 server.

Clients point their endpoint (``STORAGE_EMULATOR_HOST``, ``AWS_ENDPOINT_URL``) at the
proxy; it forwards each request to the upstream server and, on a seeded ``rate`` of
requests, instead:

- ``500`` / ``503``: answers with that status without forwarding (a flaky front end);
- ``drop``: forwards the request (so the upstream *did* the work: a retried upload is a
  second identical write), sends the status line, headers and half the body, then closes
  the socket mid-response (a reset connection).

Bounds, so a broken retry loop fails a test instead of hanging it: at most ``max_faults_in_a_row``
faults for the same (method, path, query) in a row (the next attempt goes through, which keeps
each request's retry wait to the libraries' first backoff step), at most ``max_requests``
requests (then every answer is 503 "budget spent") and a ``lifetime_s`` after which the
server shuts down. Both ends must be on 127.0.0.1.
"""
from __future__ import annotations

import collections
import http.client
import http.server
import random
import socket
import struct
import threading
import urllib.parse

FAULTS = ("500", "503", "drop")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length"}


class FaultProxy:
    """``with FaultProxy(upstream, rate=0.2, seed=1) as proxy: ... proxy.endpoint``."""

    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 0, faults=FAULTS,
                 max_faults_in_a_row: int = 1, max_requests: int = 5000, lifetime_s: float = 120.0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.scheme != "http":
            raise ValueError(f"FaultProxy forwards to loopback http only, got {upstream!r}")
        if not 0.0 <= rate < 1.0:
            raise ValueError("rate must be within [0, 1)")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.rate, self.faults = rate, tuple(faults)
        self.max_faults_in_a_row, self.max_requests, self.lifetime_s = max_faults_in_a_row, max_requests, lifetime_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._streak: dict[tuple, int] = collections.defaultdict(int)
        self.log: list[tuple[str, str, str]] = []  # (method, path, fault or "ok")
        self._server: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.endpoint = ""

    # ------------------------------------------------------------------ decisions
    def _decide(self, method: str, path: str) -> str:
        """'ok', a fault name, or 'budget' (thread-safe, seeded; the draw order follows
        arrival order, so concurrent clients may see a different but equally dense pattern)."""
        with self._lock:
            if len(self.log) >= self.max_requests:
                self.log.append((method, path, "budget"))
                return "budget"
            ident = (method, path)
            draw = self._rng.random()
            fault = self._rng.choice(self.faults)
            if draw < self.rate and self._streak[ident] < self.max_faults_in_a_row:
                self._streak[ident] += 1
                self.log.append((method, path, fault))
                return fault
            self._streak[ident] = 0
            self.log.append((method, path, "ok"))
            return "ok"

    def counts(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(f for _, _, f in self.log)

    # ------------------------------------------------------------------ forwarding
    def _forward(self, method: str, path: str, headers, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)  # Host kept as sent: S3 signatures cover it
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _handler(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def _handle(self) -> None:
                body = self._body()
                decision = proxy._decide(self.command, self.path)
                if decision == "budget":
                    return self._answer(503, "fault proxy: request budget spent")
                if decision in ("500", "503"):
                    return self._answer(int(decision), f"fault proxy: injected {decision}")
                status, reason, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if decision == "drop":
                    # Half the body (or nothing), then a hard close: the client sees a
                    # reset/short read after the upstream has already acted on the request.
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            def _safe_handle(self) -> None:
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _safe_handle

        return Handler

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FaultProxy":
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        timer = threading.Timer(self.lifetime_s, self.stop)
        timer.daemon = True
        timer.start()
        self._threads = [serve]
        self._timer = timer
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
