"""``gpuguardd simulate``: the controller against the simulated host, in virtual time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gpuguardd.config import POLICIES


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a scenario in virtual time and summarise it")
    p.add_argument("--scenario", required=True, help="built-in scenario name or scenario file")
    p.add_argument("--policy", default="full", choices=POLICIES)
    p.add_argument("--seconds", type=float, help="override the scenario's duration")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--json", metavar="FILE", help="write the result document here ('-' = stdout)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from gpuguardd.evaluate.run import simulate
    from gpuguardd.export import logs
    from gpuguardd.sim.scenario import ScenarioError

    logs.setup("warning")
    if args.seconds is not None and args.seconds <= 0:
        print("gpuguardd: --seconds must be > 0", file=sys.stderr)
        return 2
    try:
        result = simulate(args.scenario, policy=args.policy, seconds=args.seconds,
                          seed=args.seed)
    except ScenarioError as e:
        for err in getattr(e, "errors", [str(e)]):
            print(f"{args.scenario}: {err}", file=sys.stderr)
        return 2
    if args.json:
        text = json.dumps(result, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    if args.json != "-":
        print(summary(result))
    return 0


def summary(r: dict[str, Any]) -> str:
    lines = [f"{r['scenario']}  policy={r['policy']}  {r['seconds']:g} s simulated  "
             f"seed={r['seed']}  wall {r['wall_seconds']:.2f} s"]
    for name, t in r["tenants"].items():
        if "ttft_p99_ms" in t:
            lines.append(
                f"  {name:<10} ttft p50 {t['ttft_p50_ms']:8.2f} ms  p99 {t['ttft_p99_ms']:8.2f} ms"
                f"  p999 {t['ttft_p999_ms']:8.2f} ms  SLO-violating windows "
                f"{100 * t['slo_violation_rate']:5.1f} %  {t['completed']} requests"
                f"  downtime {t.get('downtime_s', 0):.0f} s")
        else:
            lines.append(f"  {name:<10} throughput {t['throughput']:.4g}")
    acts = ", ".join(f"{k} {v}" for k, v in r["actions"].items() if v) or "none"
    lines.append(f"  actions: {acts}; MIG reconfigurations {r['mig_reconfigs']}; "
                 f"level changes {r['level_changes']}")
    return "\n".join(lines)
