"""Side-by-side evaluation of the ladder's policies in the simulator.

    python benchmarks/bench_policy.py [--scenario noisy-neighbor] [--seeds 1-5]
        [--policies static,guards,placement,mig,full] [--seconds S] [--trace]

Prints, per policy, the mean over seeds of the latency tenants' SLO-violation rate and p99 TTFT,
the batch tenants' throughput relative to ``static``, MIG reconfigurations and level changes
(both per simulated hour).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from tests.policy.simloop import run


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="noisy-neighbor")
    ap.add_argument("--seeds", default="1-5")
    ap.add_argument("--policies", default="static,guards,placement,mig,full")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--trace", action="store_true", help="print every decision of the last run")
    ap.add_argument("--knob", action="append", default=[],
                    help="policy knob override, e.g. --knob restart_outage_s=0")
    args = ap.parse_args()
    seeds = _seeds(args.seeds)
    knobs = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.knob)}
    rows: dict[str, dict[str, list[float]]] = {}
    base_tp: dict[tuple[int, str], float] = {}
    for policy in args.policies.split(","):
        acc: dict[str, list[float]] = {}
        for seed in seeds:
            t0 = time.perf_counter()
            r = run(args.scenario, policy, seed, seconds=args.seconds,
                    knobs=knobs if policy != "static" else None)
            wall = time.perf_counter() - t0
            hours = float(r.results["seconds"]) / 3600.0
            tenants = r.results["tenants"]
            for name, m in tenants.items():
                if "slo_violation_rate" in m and name in r.state.victims:
                    acc.setdefault(f"{name} viol%", []).append(100 * m["slo_violation_rate"])
                    acc.setdefault(f"{name} p99ms", []).append(m["ttft_p99_ms"] or 0.0)
                elif name not in r.state.victims:
                    tp = float(m["throughput"])
                    if policy == "static":
                        base_tp[(seed, name)] = tp
                    ref = base_tp.get((seed, name))
                    if ref:
                        acc.setdefault(f"{name} tp%", []).append(100 * tp / ref)
            acc.setdefault("migcfg/h", []).append(float(r.results["mig_reconfigs"]) / hours)
            per = [c / hours for c in r.state.level_changes.values()] or [0.0]
            acc.setdefault("maxlvl/h", []).append(max(per))
            acc.setdefault("wall s", []).append(wall)
            if args.trace and seed == seeds[-1]:
                print(f"--- {policy} seed {seed}: {r.actions}")
                for t, d in r.trace:
                    for a, why in zip(d.actions, d.reasons, strict=True):
                        print(f"  t={t:6.0f} {a.kind:12s} {why}")
        rows[policy] = acc
    cols = sorted({c for acc in rows.values() for c in acc})
    print(f"{args.scenario}, seeds {args.seeds}, mean over seeds")
    print(f"{'policy':10s}" + "".join(f"{c:>12s}" for c in cols))
    for policy, acc in rows.items():
        cells = "".join(
            f"{statistics.fmean(acc[c]):12.1f}" if c in acc else f"{'':12s}" for c in cols
        )
        print(f"{policy:10s}{cells}")


if __name__ == "__main__":
    main()
