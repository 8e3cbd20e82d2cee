"""The read-only HTTP endpoint: ``/metrics`` (Prometheus), ``/status`` (JSON), ``/healthz``.

Only GET and HEAD are served; everything else is 405. Binds loopback unless configured
otherwise. Runs in its own daemon threads, reading immutable data published by the engine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry,
                 status: Callable[[], Any]):
        import socket

        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)
        self.registry = registry
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "gpuguardd"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            data, ctype = generate_latest(self.server.registry), CONTENT_TYPE_LATEST
        elif path == "/status":
            data = json.dumps(self.server.status(), indent=1, default=str).encode()
            ctype = "application/json"
        elif path in ("/healthz", "/"):
            data, ctype = b"ok\n", "text/plain; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _refuse(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers 501 to a method it has no do_X for (OPTIONS, TRACE,
        # anything made up); a read-only endpoint answers every non-GET/HEAD with 405.
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not events


class MetricsServer:
    def __init__(self, listen: str, registry: CollectorRegistry, status: Callable[[], Any]):
        self._server = _Server(parse_listen(listen), registry, status)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        # shutdown() waits for serve_forever to acknowledge: never started, it waits for ever
        # (a start-up that fails after binding, e.g. on the control socket, hung here)
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
