"""A stand-in for the sdplane controller's internal API (wire/src/admin.rs), for
bench/router_overhead.sh only: it serves a fixed route table whose one app, `bench`, is `ready`
with the trivial backend as its endpoint, so `sdplane router` proxies to a server we choose.

GET  /internal/v1/routes?after=V  -> the table at once when V differs from its version, else held
                                     up to 25 s (the long poll) and then the same table.
POST /internal/v1/activity        -> 204 (the router's load reports; counted, not used).
Anything else                     -> 404 with the path logged to stderr, so a contract drift
                                     between router and this stand-in shows up in the bench log.

Usage: fake_controller.py PORT BACKEND_URL
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

VERSION = 1
# How long a long poll with an up-to-date `after` is held before answering the same table.
LONG_POLL_SECONDS = 25.0


def table(backend: str) -> dict:
    return {
        "version": VERSION,
        "apps": {
            "bench": {
                "state": "ready",
                "endpoints": [backend],
                "estimated_cold_start_seconds": 0.0,
                "replicas_ready": 1,
                "replicas_total": 1,
            }
        },
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend = ""
    stop = threading.Event()

    def log_message(self, fmt, *args):  # quiet: only contract drift is logged
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/internal/v1/routes":
            after = parse_qs(url.query).get("after", [None])[0]
            if after is not None and after == str(VERSION):
                self.stop.wait(LONG_POLL_SECONDS)
            self._send(200, json.dumps(table(self.backend)).encode())
            return
        if url.path in ("/healthz", "/readyz", "/metrics"):
            self._send(200, b"ok\n", "text/plain")
            return
        print(f"fake_controller: unexpected GET {self.path}", file=sys.stderr, flush=True)
        self._send(404, b'{"status":"error"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlparse(self.path)
        if url.path == "/internal/v1/activity":
            self._send(204)
            return
        print(f"fake_controller: unexpected POST {self.path}", file=sys.stderr, flush=True)
        self._send(404, b'{"status":"error"}')


def main() -> None:
    port, backend = int(sys.argv[1]), sys.argv[2]
    Handler.backend = backend
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"fake_controller: listening on 127.0.0.1:{port}, app `bench` -> {backend}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
