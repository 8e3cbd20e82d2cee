"""A latency-sensitive tenant for real-kernel tests: small synchronous direct writes.

    python victim.py CGROUP_PROCS FILE PUSH_SOCKET TENANT RESULTS

Moves itself into its cgroup, takes SCHED_FIFO priority if it may, then writes 4 KiB with
O_DIRECT|O_DSYNC every 2 ms, measures each write, pushes the latencies to the gpuguardd push
socket every 100 ms (as ``ttft_s`` batches) and appends one JSON line per second to RESULTS:
``{"t", "n", "p50_ms", "p99_ms"}``.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import socket
import sys
import time


def main() -> None:
    procs, path, sock_path, tenant, results = sys.argv[1:6]
    # Real-time priority keeps CPU contention from other work on the machine out of the
    # measurement: what is left is the block layer, which is what the test is about.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT | os.O_DSYNC, 0o600)
    buf = mmap.mmap(-1, 4096)
    buf.write(b"v" * 4096)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    batch: list[float] = []
    second: list[float] = []
    last_push = last_report = time.monotonic()
    i = 0
    print("victim-ready", flush=True)
    while True:
        t0 = time.perf_counter()
        os.pwrite(fd, buf, (i % 256) * 4096)
        dt = time.perf_counter() - t0
        i += 1
        batch.append(dt)
        second.append(dt)
        now = time.monotonic()
        if now - last_push >= 0.1:
            # the daemon not (yet) listening just loses these samples
            with contextlib.suppress(OSError):
                sock.sendto(json.dumps({"tenant": tenant, "ttft_s": batch}).encode(), sock_path)
            batch = []
            last_push = now
        if now - last_report >= 1.0:
            second.sort()
            with open(results, "a") as f:
                f.write(json.dumps({"t": time.time(), "n": len(second),
                                    "p50_ms": second[len(second) // 2] * 1e3,
                                    "p99_ms": second[int(len(second) * 0.99)] * 1e3}) + "\n")
            second = []
            last_report = now
        time.sleep(0.002)


if __name__ == "__main__":
    main()
