"""Push socket under load: 50,000 latency samples per second into a running daemon, which must
keep its tick deadline and lose nothing (issue 9).

The daemon is the real composition (``app.daemon.build``, backend "real" without GPUs: push
receiver thread, engine thread, metrics server) inside this process; a separate sender process
paces single-sample datagrams - the worst case, one JSON parse per sample - over 4 tenants.
Reported: samples sent and accepted, rejections by reason, the rate the sender achieved, and
the daemon's ticks: how many ran against how many were due, tick duration (p50, p99, max) and
how late each tick started against its schedule.

    python benchmarks/bench_push.py [--rate 50000] [--seconds 30] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

from gpuguardd import config
from gpuguardd.app.daemon import build
from gpuguardd.export.logs import setup as setup_logs
from gpuguardd.runtime.engine import TickReport

TENANTS = ("llm0", "llm1", "llm2", "llm3")


def sender(path: str, rate: float, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Send ``rate`` single-sample datagrams per second for ``seconds`` (blocking sends: a
    full socket buffer slows the sender down instead of dropping)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    payloads = [f'{{"tenant": "{t}", "ttft_s": 0.0{i % 90 + 10}}}'.encode()
                for i in range(100) for t in TENANTS]
    sent, t0 = 0, time.monotonic()
    batch = max(1, int(rate / 200))  # 5 ms worth per batch
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        due = int(rate * elapsed) + batch
        while sent < due:
            s.sendto(payloads[sent % len(payloads)], path)
            sent += 1
        pause = sent / rate - (time.monotonic() - t0)
        if pause > 0:
            time.sleep(pause)
    out.put((sent, time.monotonic() - t0))


class TickLog:
    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []  # (monotonic start, duration)

    def publish(self, report: TickReport) -> None:
        self.ticks.append((time.monotonic() - report.duration_s, report.duration_s))


def run(rate: float, seconds: float, interval: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gpuguardd-bench-push-") as d:
        tenants = "".join(f'[[tenant]]\nname = "{t}"\nclass = "latency"\n'
                          f"slo = {{ ttft_p99_ms = 50.0 }}\n" for t in TENANTS)
        cfg = config.loads(f"""
[daemon]
interval_s = {interval}
backend = "real"
require_gpu = false
state_dir = "{d}/state"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{d}/run/latency.sock"
[control]
socket = "{d}/run/control.sock"
{tenants}""")
        daemon = build(cfg, config_path=None)
        ticks = TickLog()
        daemon.engine.publishers = (*daemon.engine.publishers, ticks)
        stop, reload = threading.Event(), threading.Event()
        thread = threading.Thread(target=daemon.run, args=(stop, reload), daemon=True)
        thread.start()
        time.sleep(2 * interval)  # settle: first ticks, receiver up
        push = daemon.host.push  # type: ignore[attr-defined]
        accepted0 = push.accepted_samples
        first_tick = len(ticks.ticks)
        ctx = multiprocessing.get_context("spawn")
        q: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
        p = ctx.Process(target=sender, args=(str(push.path), rate, seconds, q))
        t0 = time.monotonic()
        p.start()
        rss = [_rss_mb()]
        while p.is_alive() and q.empty():
            time.sleep(min(5.0, seconds / 10))
            rss.append(_rss_mb())
        sent, send_s = q.get(timeout=seconds + 60)
        p.join()
        deadline = time.monotonic() + 5
        while push.accepted_samples - accepted0 < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        window = time.monotonic() - t0
        accepted = push.accepted_samples - accepted0
        rejected = push.rejected()
        stop.set()
        thread.join(15)
    during = ticks.ticks[first_tick:]
    starts = [s for s, _ in during]
    durations = sorted(dur for _, dur in during)
    late = [max(0.0, (b - a) - interval) for a, b in itertools.pairwise(starts)]
    return {
        "sent": sent, "send_rate": sent / send_s, "accepted": accepted,
        "lost": sent - accepted, "rejected": sum(rejected.values()),
        "ticks": len(during), "ticks_due": int(window / interval),
        "tick_p50_ms": 1e3 * statistics.median(durations),
        "tick_p99_ms": 1e3 * durations[int(0.99 * (len(durations) - 1))],
        "tick_max_ms": 1e3 * durations[-1],
        "late_max_ms": 1e3 * max(late, default=0.0),
        "receiver_cpu_s": float(getattr(push, "cpu_s", float("nan"))),
        "window_s": window,
        "rss_start_mb": rss[0], "rss_max_mb": max(rss), "rss_end_mb": rss[-1],
    }


def _rss_mb() -> float:
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50_000, help="samples (datagrams) per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=1.0, help="daemon tick interval, s")
    args = ap.parse_args()
    setup_logs("error")
    r = run(args.rate, args.seconds, args.interval)
    print(f"push: {args.rate:,.0f} single-sample datagrams/s for {args.seconds:g} s into a "
          f"running daemon (interval {args.interval:g} s), {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}")
    print(f"  sent {r['sent']:,.0f} at {r['send_rate']:,.0f}/s; accepted {r['accepted']:,.0f}; "
          f"lost {r['lost']:,.0f}; rejected {r['rejected']:,.0f}")
    print(f"  ticks {r['ticks']:.0f} of {r['ticks_due']:.0f} due; tick duration p50 "
          f"{r['tick_p50_ms']:.2f} ms, p99 {r['tick_p99_ms']:.2f} ms, max "
          f"{r['tick_max_ms']:.2f} ms; latest tick start {r['late_max_ms']:.1f} ms behind "
          f"schedule")
    print(f"  receiver thread CPU {r['receiver_cpu_s']:.1f} s over {r['window_s']:.1f} s")
    print(f"  daemon process RSS {r['rss_start_mb']:.1f} MB at the start, max "
          f"{r['rss_max_mb']:.1f} MB, {r['rss_end_mb']:.1f} MB at the end")
    # sends block when the socket buffer is full, so a receiver that cannot keep up shows as
    # a sender below the target rate
    ok = (r["lost"] == 0 and r["send_rate"] >= 0.95 * args.rate
          and r["ticks"] >= r["ticks_due"] - 1 and r["late_max_ms"] < 1e3 * args.interval)
    print("  PASS" if ok else "  FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
