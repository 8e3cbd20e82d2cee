"""``gpuguardd evaluate``: every policy on one scenario and the same seeds, side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gpuguardd.config import POLICIES


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="compare policies on a scenario (ablation table)")
    p.add_argument("--scenario", required=True, help="built-in scenario name or scenario file")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="comma-separated subset of " + ",".join(POLICIES))
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    p.add_argument("--seconds", type=float, help="override the scenario's duration")
    p.add_argument("--workers", type=int, help="parallel runs (default: one per core)")
    p.add_argument("--json", metavar="FILE", help="write per-run results and the table")
    p.add_argument("--plots", metavar="DIR", help="write latency CDF and timeline PNGs here")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from gpuguardd.evaluate import ablation
    from gpuguardd.export import logs
    from gpuguardd.sim.scenario import ScenarioError, load_scenario

    logs.setup("error")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        print(f"gpuguardd: unknown policy {', '.join(bad) or '(none)'}; one of "
              f"{', '.join(POLICIES)}", file=sys.stderr)
        return 2
    if args.seeds < 1 or (args.seconds is not None and args.seconds <= 0):
        print("gpuguardd: --seeds must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        for err in getattr(e, "errors", [str(e)]):
            print(f"{args.scenario}: {err}", file=sys.stderr)
        return 2
    if "static" not in policies:
        policies.insert(0, "static")  # the baseline every ratio refers to
    victims = [t.name for t in scenario.tenants if t.tenant_class == "latency"]
    batch = [t.name for t in scenario.tenants if t.tenant_class != "latency"]
    seeds = list(range(1, args.seeds + 1))
    results = ablation.run_matrix(args.scenario, policies, seeds, seconds=args.seconds,
                                  workers=args.workers, detail=bool(args.plots),
                                  progress=ablation.progress_printer())
    table = ablation.summarise(results, victims, batch)
    print(ablation.format_table(scenario.name, table, victims, len(seeds)))
    if args.plots:
        from gpuguardd.evaluate import plots

        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        slo = next((t.ttft_p99_ms for t in scenario.tenants if t.name == victims[0]), None)
        written = [plots.cdf(results, victims[0], slo, out / f"{scenario.name}-cdf.png",
                             f"{scenario.name}: {victims[0]} TTFT, {len(seeds)} seed(s)")]
        for r in results:
            if r["seed"] == seeds[0] and r["policy"] != ablation.ALONE:
                written.append(plots.timeline(
                    r, victims[0], slo, out / f"{scenario.name}-timeline-{r['policy']}.png"))
        for path in written:
            print(f"wrote {path}")
    if args.json:
        for r in results:
            r.pop("detail", None)
        Path(args.json).write_text(json.dumps({"scenario": scenario.name, "seeds": seeds,
                                               "table": table, "runs": results}, indent=1))
    return 0
