"""A tiny OpenAI-compatible streaming server for the profiler tests.

Its latency depends on the compute share: ``CUDA_DEVICE_SM_LIMIT`` from its environment, or, when
a control file is given, the share written there (by the restart hook). TTFT = 20 ms / share,
inter-token gap = 4 ms / share. Model ``fail`` answers HTTP 500.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BASE_TTFT_S = 0.02
BASE_GAP_S = 0.004


class Handler(BaseHTTPRequestHandler):
    server: StreamServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(length))
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions") or not req.get("stream"):
            self.send_error(400)
            return
        if req.get("model") == "fail":
            self.send_error(500)
            return
        share = self.server.share() / 100.0
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b": keep-alive\n\n")
        self.wfile.flush()
        time.sleep(BASE_TTFT_S / share)
        for i in range(int(req.get("max_tokens", 16))):
            if i:
                time.sleep(BASE_GAP_S / share)
            choice = {"delta": {"content": f"t{i}"}} if chat else {"text": f"t{i}"}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


class StreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, control: Path | None):
        super().__init__(("127.0.0.1", port), Handler)
        self.control = control

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return  # the client left mid-stream (a timeout, a cancelled sweep), as clients do
        super().handle_error(request, client_address)

    def share(self) -> float:
        if self.control is not None:
            return float(self.control.read_text().split()[0])
        return float(os.environ.get("CUDA_DEVICE_SM_LIMIT", "100"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    StreamServer(ap.parse_args().port, None).serve_forever()
