"""Soak: a long simulated run at host scale with constant controller memory and no drift in
tick time (issue 9).

A 16-GPU host (p4d-x2) with 7 MIG tenants per GPU (112 tenants: inference, ETL, training), the
ETL jobs switching on and off every 10 minutes (staggered) so that throttles are applied,
tightened, expire and are released all day, runs under the `full` policy in virtual time.
Every ``--sample-s`` simulated seconds the controller's own state is measured by deep size:
policy state (windows, sketches, levers, trials), executor (back-offs, unavailable levers),
journal (entries and file), collector and status board. Reported per sample, then: the
growth of each after the first hour (the longest policy memory, ``lever_memory_s`` = 900 s,
has filled by then) and the drift of the controller's time per tick (median of the last
hour / first hour after warm-up). Process RSS is shown too, but it includes the simulator's
per-request ground-truth history, which grows by design and is not the daemon's.

    python benchmarks/bench_soak.py                 # 24 simulated hours, 16 GPUs, 112 tenants
    python benchmarks/bench_soak.py --hours 2 --gpus 8

24 simulated hours take about 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_controller import scenario_text

from gpuguardd.evaluate.run import sim_config
from gpuguardd.export.logs import setup as setup_logs
from gpuguardd.export.metrics import GpuguardCollector
from gpuguardd.runtime.engine import Engine, ladder_policy
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from gpuguardd.runtime.status import StatusBoard
from gpuguardd.sim.scenario import loads

TOGGLE_S = 600


def soak_scenario(gpus: int, per_gpu: int, seconds: float, noisy_every: int = 4) -> str:
    """bench_controller's host-scale mix, plus noisy-neighbor's pressure on every
    ``noisy_every``-th GPU (big pinned ETL copies over the link its latency tenants load their
    offloaded KV cache through, 15 ms SLO), with the ETL jobs toggled every TOGGLE_S."""
    blocks = scenario_text(gpus, per_gpu).replace(
        "seconds = 600", f"seconds = {seconds:g}").split("[[tenant]]")
    out = [blocks[0]]
    for block in blocks[1:]:
        g = int(block.split("gpu = ", 1)[1].split()[0])
        if g % noisy_every == 0:
            block = (block.replace("read_bps = 1.0e9", "read_bps = 2.5e9\n"
                                   "chunk_bytes = 268435456\nstreams = 8")
                     .replace("ttft_p99_ms = 50.0", "ttft_p99_ms = 15.0")
                     .replace("arrivals = { rate_rps = 4 }", "arrivals = { rate_rps = 10 }\n"
                              "prefix_hit_rate = 0.9\nprefix_fraction = 0.95"))
        out.append(block)
    text = "[[tenant]]".join(out)
    events: list[str] = []
    for g in range(gpus):
        for i in range(per_gpu):
            if ("inference", "inference", "inference", "etl", "training")[i % 5] != "etl":
                continue
            t, on = float((g * 97) % TOGGLE_S), False
            while t < seconds:
                events += ["[[event]]", f"at_s = {t:g}", f'tenant = "g{g}t{i}"',
                           f'action = "{"start" if on else "stop"}"']
                t, on = t + TOGGLE_S, not on
    return text.rstrip("\n") + "\n" + "\n".join(events) + "\n"


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes reachable from ``obj`` (containers, dataclasses, slots), each object once."""
    seen = set() if seen is None else seen
    stack = [obj]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type) or (callable(o) and not hasattr(o, "__dict__")):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, list | tuple | set | frozenset | collections.deque):
            stack += list(o)
        elif dataclasses.is_dataclass(o) or hasattr(o, "__slots__") or hasattr(o, "__dict__"):
            if hasattr(o, "__dict__"):
                stack.append(vars(o))
            for cls in type(o).__mro__:
                for s in getattr(cls, "__slots__", ()):
                    if hasattr(o, s):
                        stack.append(getattr(o, s))
    return total


@dataclass
class Sample:
    t: float
    state_bytes: int
    executor_bytes: int
    journal_entries: int
    journal_file_bytes: int
    collector_bytes: int
    board_bytes: int
    controller_ms: float  # median controller time per tick since the previous sample
    rss_mb: float
    actions: int  # actions applied or reverted so far


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(text: str, seconds: float, sample_s: float = 600.0,
         on_sample: Callable[[Sample], None] | None = None,
         policy: str = "full") -> list[Sample]:
    """Run scenario ``text`` for ``seconds`` under ``policy``, sampling as it goes."""
    scenario = loads(text, seconds=seconds)
    cfg = sim_config(scenario, policy)
    host = scenario.build_host()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="gpuguardd-soak-") as d:
        journal = Journal(d, wall_clock_now=0.0, durable=False)
        executor = Executor(host, journal)
        collector = GpuguardCollector(lambda: cfg)
        board = StatusBoard(executor)
        engine = Engine(host, executor, cfg, ladder_policy(), publishers=(collector, board))
        observe = host.observe
        observe_s: list[float] = []

        def timed_observe(now: float) -> Any:
            t0 = time.perf_counter()
            try:
                return observe(now)
            finally:
                observe_s.append(time.perf_counter() - t0)

        host.observe = timed_observe  # type: ignore[method-assign]
        controller: list[float] = []
        now, next_sample = 0.0, 0.0
        while now <= seconds:
            report = engine.tick(now)
            controller.append(report.duration_s - observe_s[-1])
            if now >= next_sample:
                list(collector.collect())  # a scrape, as Prometheus would do
                jpath = Path(d) / "journal.json"
                s = Sample(
                    t=now, state_bytes=deep_size(engine.state),
                    executor_bytes=deep_size([executor._backoff, executor._unavailable,
                                              executor._dry_active]),
                    journal_entries=len(journal),
                    journal_file_bytes=jpath.stat().st_size if jpath.exists() else 0,
                    collector_bytes=deep_size([collector._actions, collector._tick_buckets]),
                    board_bytes=deep_size(board._decisions),
                    controller_ms=1e3 * statistics.median(controller) if controller else 0.0,
                    rss_mb=_rss_mb(),
                    actions=sum(n for (_, r), n in collector._actions.items()
                                if r in ("applied", "reverted")))
                samples.append(s)
                if on_sample is not None:
                    on_sample(s)
                controller = []
                next_sample += sample_s
            now += cfg.daemon.interval_s
        engine.shutdown("end of soak")
    return samples


def growth(samples: list[Sample], field: str, after_s: float = 3600.0) -> tuple[float, float]:
    """(max before ``after_s``, max after it) of one measured field."""
    before = [getattr(s, field) for s in samples if s.t <= after_s]
    later = [getattr(s, field) for s in samples if s.t > after_s]
    return float(max(before)), float(max(later) if later else max(before))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours")
    ap.add_argument("--gpus", type=int, default=16, choices=(8, 16))
    ap.add_argument("--sample-s", type=float, default=1800.0, help="simulated s per sample")
    args = ap.parse_args()
    setup_logs("error")
    seconds = args.hours * 3600
    print(f"soak: {args.gpus} GPUs, {args.gpus * 7} tenants, {args.hours:g} simulated h, "
          f"policy full, interval 2 s, {os.cpu_count()} cores")
    print(f"{'sim h':>6} {'state KiB':>9} {'executor B':>10} {'journal':>7} {'journal B':>9} "
          f"{'collector B':>11} {'board KiB':>9} {'ctrl ms':>7} {'RSS MB':>7} {'actions':>7} "
          f"{'wall s':>7}")
    wall0 = time.monotonic()

    def show(s: Sample) -> None:
        print(f"{s.t / 3600:>6.1f} {s.state_bytes / 1024:>9.1f} {s.executor_bytes:>10} "
              f"{s.journal_entries:>7} {s.journal_file_bytes:>9} {s.collector_bytes:>11} "
              f"{s.board_bytes / 1024:>9.1f} {s.controller_ms:>7.2f} {s.rss_mb:>7.0f} "
              f"{s.actions:>7} {time.monotonic() - wall0:>7.0f}", flush=True)

    samples = soak(soak_scenario(args.gpus, 7, seconds), seconds, args.sample_s, show)
    print("growth after the first simulated hour (max in hour 1 -> max afterwards):")
    for field in ("state_bytes", "executor_bytes", "journal_entries", "journal_file_bytes",
                  "collector_bytes", "board_bytes"):
        a, b = growth(samples, field)
        print(f"  {field:<20} {a:>10.0f} -> {b:>10.0f}  ({b / a if a else 1.0:.2f}x)")
    warm = [s.controller_ms for s in samples if 3600 < s.t <= 7200] or [samples[1].controller_ms]
    last = [s.controller_ms for s in samples if s.t > seconds - 3600] or [samples[-1].controller_ms]
    drift = statistics.median(last) / statistics.median(warm)
    print(f"controller median ms per tick: hour 2 {statistics.median(warm):.2f}, last hour "
          f"{statistics.median(last):.2f} (drift {drift:.2f}x)")
    print(f"wall time {time.monotonic() - wall0:.0f} s")


if __name__ == "__main__":
    main()
