"""Controller cost per tick at host scale, and the daemon's peak RSS (issue 7).

Hosts of 1, 8 and 16 GPUs with 8 to 112 tenants (a mix of latency-class inference servers,
ETL jobs and training jobs on MIG instances, or time-sliced shares on the 1-GPU host) run on
the simulated backend with the `full` policy. Each tick's wall time is split into the
simulator's own work (observe: not the controller's cost on a real host) and the controller's
(expire + decide + apply + absorb + publish). Reported: median and p99 per tick, and % of one
core at a 2 s interval. Then the real daemon process (`gpuguardd run --sim`) is started and its
peak RSS (VmHWM) read after a minute of simulated time.

    python benchmarks/bench_controller.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuguardd.evaluate.run import sim_config
from gpuguardd.export.logs import setup as setup_logs
from gpuguardd.export.metrics import GpuguardCollector
from gpuguardd.runtime.engine import Engine, ladder_policy
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from gpuguardd.sim.scenario import loads

ROOT = Path(__file__).resolve().parents[1]


def scenario_text(gpus: int, per_gpu: int) -> str:
    """``per_gpu`` tenants per GPU: on MIG (7 x 1g) when per_gpu <= 7, else time-sliced."""
    preset = {1: "a100-pcie", 8: "p4d", 16: "p4d-x2"}[gpus]
    mig = per_gpu <= 7
    out = ["[scenario]", 'name = "scale"', "seconds = 600", "seed = 1", "[host]",
           f'preset = "{preset}"']
    if mig:
        profile = "1g.10gb" if preset == "a100-pcie" else "1g.5gb"
        layout = ", ".join(f'"{g}" = [{", ".join([repr(profile)] * per_gpu)}]'
                           for g in range(gpus))
        out.append(f"mig = {{ {layout} }}".replace("'", '"'))
    for g in range(gpus):
        for i in range(per_gpu):
            name = f"g{g}t{i}"
            kind = ("inference", "inference", "inference", "etl", "training")[i % 5]
            out += ["[[tenant]]", f'name = "{name}"', f'kind = "{kind}"', f"gpu = {g}"]
            if mig:
                out.append(f"instance = {i}")
            else:
                out.append(f"share_pct = {100 // per_gpu}")
            if kind == "inference":
                out += ['class = "latency"', 'model = "Qwen3-0.6B"',
                        "slo = { ttft_p99_ms = 50.0 }", "arrivals = { rate_rps = 4 }",
                        "kv_offload = true", "prompt_tokens = 256", "output_tokens = 16"]
            elif kind == "etl":
                out += ['class = "batch"', "read_bps = 1.0e9"]
            else:
                out += ['class = "batch"', "step_s = 0.5", "batch_bytes = 134217728"]
    return "\n".join(out) + "\n"


class TimedHost:
    def __init__(self, host: object) -> None:
        self._host = host
        self.observe_s: list[float] = []

    def observe(self, now: float):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        snap = self._host.observe(now)  # type: ignore[attr-defined]
        self.observe_s.append(time.perf_counter() - t0)
        return snap

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._host, name)


def measure(gpus: int, per_gpu: int, seconds: float) -> dict[str, float]:
    scenario = loads(scenario_text(gpus, per_gpu), seconds=seconds)
    cfg = sim_config(scenario, "full")
    host = TimedHost(scenario.build_host())
    with tempfile.TemporaryDirectory() as d:
        ex = Executor(host, Journal(d, wall_clock_now=0, durable=False))  # type: ignore[arg-type]
        collector = GpuguardCollector(lambda: cfg)
        engine = Engine(host, ex, cfg, ladder_policy(), publishers=(collector,))  # type: ignore[arg-type]
        ticks: list[float] = []
        now = 0.0
        while now <= seconds:
            report = engine.tick(now)
            ticks.append(report.duration_s)
            now += cfg.daemon.interval_s
    controller = sorted(t - o for t, o in zip(ticks, host.observe_s, strict=True))
    sim = sorted(host.observe_s)
    median = statistics.median(controller)
    return {
        "gpus": gpus, "tenants": gpus * per_gpu, "ticks": len(ticks),
        "controller_median_ms": 1e3 * median,
        "controller_p99_ms": 1e3 * controller[int(0.99 * (len(controller) - 1))],
        "core_pct_at_2s": 100 * median / 2.0,
        "sim_observe_median_ms": 1e3 * statistics.median(sim),
    }


REAL_CONFIG = """
[daemon]
interval_s = 0.5
backend = "real"
require_gpu = false
state_dir = "{d}/state"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{d}/latency.sock"
[[tenant]]
name = "victim"
class = "latency"
slo = {{ ttft_p99_ms = 15.0 }}
[[tenant]]
name = "etl"
class = "batch"
"""


def daemon_peak_rss_mb(argv: list[str], seconds: float) -> float:
    """Start the daemon, let it run ``seconds`` of real time, read VmHWM, stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "gpuguardd", "run", *argv],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early ({proc.returncode}): {argv}")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm_kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmHWM:"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return hwm_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="simulated seconds per host")
    args = ap.parse_args()
    setup_logs("error")
    print(f"controller cost per tick, policy full, {args.seconds:g} simulated s, "
          f"interval 2 s, {os.cpu_count()} cores")
    print(f"{'GPUs':>4} {'tenants':>7} {'ticks':>5} {'median ms':>9} {'p99 ms':>7} "
          f"{'% core':>7} {'sim observe ms':>14}")
    for gpus, per_gpu in ((1, 8), (8, 7), (16, 7)):
        r = measure(gpus, per_gpu, args.seconds)
        print(f"{r['gpus']:>4} {r['tenants']:>7} {r['ticks']:>5} "
              f"{r['controller_median_ms']:>9.2f} {r['controller_p99_ms']:>7.2f} "
              f"{r['core_pct_at_2s']:>7.3f} {r['sim_observe_median_ms']:>14.2f}")
    sim_rss = daemon_peak_rss_mb(["--sim", "--speed", "20", "--listen", "127.0.0.1:0"], 3.0)
    print(f"daemon peak RSS, gpuguardd run --sim (noisy-neighbor, 60 simulated s; includes the "
          f"simulated host and its per-request history): {sim_rss:.1f} MB")
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "gpuguardd.toml"
        cfg.write_text(REAL_CONFIG.format(d=d))
        cfg.chmod(0o600)
        real_rss = daemon_peak_rss_mb(["--config", str(cfg)], 10.0)
    print(f"daemon peak RSS, backend real (no GPU, push socket, 2 tenants, 20 ticks): "
          f"{real_rss:.1f} MB")


if __name__ == "__main__":
    main()
