"""Benchmarks of the vGPU allocator (issue 6). Run from the repository root:

    /work/venv/bin/python benchmarks/bench_allocator.py [--profile-csv FILE] [--json FILE]

Targets (exit 1 if one is missed):
  - predictors: held-out R² >= 0.9 (TTFT) and >= 0.95 (TPOT) for every model
  - six-model mix (etc/allocate-example.toml, two A100-SXM4-80GB): plan <= 75 % of the static
    total, every predicted p99 within its SLO, greedy within 5 % of the oracle
  - the planned shares, run in the simulator (gpuguardd simulate, policy static = no controller
    actions), meet every SLO, in each of the ``--sim-seeds`` runs (default seeds 1-6), and,
    with ``--sweep FIRST LAST``, in every run of that seed range (in-process runs)
  - 1,000 tenants over 128 GPUs: greedy (memory, profiles, placement) < 1 s wall
  - 50 tenants: oracle < 30 s

Profile data: the synthetic profiler (``gpuguardd.vgpu.synthetic``) unless ``--profile-csv``
gives a CSV in the ``gpuguardd fit`` schema. The synthetic profiler's default constants are the
simulator's timing calibration (tests/vgpu/test_synthetic.py keeps them equal); the simulator has
no closed-loop profiling client, so the rows are not measured in simulator runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpuguardd.model.llm import BUILTIN  # noqa: E402
from gpuguardd.vgpu import allocator, synthetic  # noqa: E402
from gpuguardd.vgpu.fitting import fit  # noqa: E402
from gpuguardd.vgpu.gpus import GPUS, GpuSpec  # noqa: E402
from gpuguardd.vgpu.predictor import Predictor  # noqa: E402
from gpuguardd.vgpu.profile_data import group, parse_csv  # noqa: E402

A100 = GPUS["A100-SXM4-80GB"]
SIX = ["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "DeepSeek-R1-Distill-Qwen-1.5B",
       "DeepSeek-R1-Distill-Qwen-7B"]


def predictors(
    csv: Path | None, spec: GpuSpec = A100, cal: synthetic.Calibration = synthetic.DEFAULT
) -> tuple[dict[tuple[str, str], Predictor], dict[str, Any], float]:
    t0 = time.perf_counter()
    if csv is not None:
        groups = group(parse_csv(csv.read_text()))
    else:
        groups = {(m, A100.name): synthetic.profile(BUILTIN[m], spec, np.random.default_rng(11),
                                                    cal=cal)
                  for m in [*SIX, "llama2-7b"]}
    preds: dict[tuple[str, str], Predictor] = {}
    quality: dict[str, Any] = {}
    for key, rows in sorted(groups.items()):
        p = fit(rows, held_out=0.25, seed=1, pcie_bps=A100.pcie_bps)
        preds[key] = p
        quality[key[0]] = {k: {"r2": round(q.r2, 4), "mape": round(q.mape, 4), "rows": q.rows}
                           for k, q in p.quality.items()}
    return preds, quality, time.perf_counter() - t0


EXAMPLE = ROOT / "etc" / "allocate-example.toml"


def mix_tenants() -> tuple[allocator.TenantSpec, ...]:
    data = tomllib.loads(EXAMPLE.read_text())
    return tuple(allocator.TenantSpec(
        t["name"], t["model"], BUILTIN[t["model"]], t["demand_rps"], t["prompt_tokens"],
        t["output_tokens"], t["slo"]["ttft_p99_ms"], t["slo"]["tpot_p99_ms"],
        t["static_share_pct"], prompt_tokens_p99=t.get("prompt_tokens_p99"))
        for t in data["tenant"])


def mix(preds: dict[tuple[str, str], Predictor], params: allocator.AllocParams | None = None
        ) -> tuple[dict[str, Any], allocator.Plan]:
    ts = mix_tenants()
    pb = allocator.Problem(ts, (A100,) * 2, preds, params or allocator.AllocParams())
    t0 = time.perf_counter()
    g = allocator.greedy(pb)
    t1 = time.perf_counter()
    o = allocator.oracle(pb)
    t2 = time.perf_counter()
    s = allocator.static(pb)
    static_total = sum(t.static_share_pct or 0 for t in ts)
    slo_ok = all(
        a.feasible and a.predicted_ttft_p99_ms is not None
        and a.predicted_ttft_p99_ms <= (t.ttft_slo_ms or float("inf"))
        and a.predicted_tpot_p99_ms is not None
        and a.predicted_tpot_p99_ms <= (t.tpot_slo_ms or float("inf"))
        for t, a in zip(ts, g.assignments.values(), strict=True))
    return {
        "tenants": {a.tenant: {"gpu": a.gpu, "share_pct": a.share_pct,
                               "static_share_pct": s.assignments[a.tenant].share_pct,
                               "pred_ttft_p99_ms": a.predicted_ttft_p99_ms,
                               "pred_tpot_p99_ms": a.predicted_tpot_p99_ms}
                    for a in g.assignments.values()},
        "greedy_total_pct": g.total_share_pct, "oracle_total_pct": o.total_share_pct,
        "oracle_optimal": o.optimal, "static_total_pct": static_total,
        "static_meets_predicted_slos": s.feasible,
        "saving_vs_static": round(1 - g.total_share_pct / static_total, 4),
        "gap_to_oracle": round(g.total_share_pct / o.total_share_pct - 1, 4),
        "all_predicted_slos_met": slo_ok and g.feasible,
        "greedy_s": round(t1 - t0, 4), "oracle_s": round(t2 - t1, 4),
    }, g


def simulate(plan: allocator.Plan, use_static: bool, tmp: Path, seconds: int = 600,
             seed: int = 1, in_process: bool = False) -> dict[str, Any]:
    """Run the planned (or the static) shares in the simulator, no controller actions
    (policy static), on GPUs 0-1 of a p4de (A100-SXM4-80GB) host: through ``gpuguardd
    simulate`` in a subprocess, or (``in_process``, the seed sweep) the same scenario file
    through ``gpuguardd.evaluate.run.simulate``."""
    topo = Path(os.environ.get("GPUGUARDD_SHARED_DATA", ROOT.parent / "shared" / "data"))
    lines = ["[scenario]", 'name = "vgpu-six-mix"', f"seconds = {seconds}", f"seed = {seed}",
             "[host]", f'topology = "{topo / "topology" / "p4de-24xl-topo.xml"}"',
             'gpu = "A100-SXM4-80GB"']
    for t in mix_tenants():
        a = plan.assignments[t.name]
        share = t.static_share_pct if use_static else a.share_pct
        lines += ["[[tenant]]", f'name = "{t.name}"', 'kind = "inference"', 'class = "latency"',
                  f"gpu = {a.gpu}", f'model = "{t.model}"',
                  f"slo = {{ ttft_p99_ms = {t.ttft_slo_ms}, tpot_p99_ms = {t.tpot_slo_ms} }}",
                  f"arrivals = {{ rate_rps = {t.demand_rps} }}",
                  f"prompt_tokens = {t.prompt_tokens}", f"output_tokens = {t.output_tokens}",
                  "token_sigma = 0.25", f"share_pct = {share}",
                  f"memory_limit_bytes = {a.memory_bytes}", f"max_batch = {a.batch or 32}"]
    scen = tmp / ("static.toml" if use_static else "plan.toml")
    scen.write_text("\n".join(lines) + "\n")
    out = scen.with_suffix(".json")
    if in_process:
        from gpuguardd.evaluate.run import simulate as run_scenario
        from gpuguardd.sim.scenario import load_scenario
        res = run_scenario(load_scenario(str(scen)), policy="static")
    else:
        subprocess.run([sys.executable, "-m", "gpuguardd", "simulate", "--scenario", str(scen),
                        "--policy", "static", "--json", str(out)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        res = json.loads(out.read_text())
    rows = {}
    for t in mix_tenants():
        x = res["tenants"][t.name]
        rows[t.name] = {
            "share_pct": t.static_share_pct if use_static else plan.assignments[t.name].share_pct,
            "ttft_p99_ms": round(x["ttft_p99_ms"], 1), "ttft_slo_ms": t.ttft_slo_ms,
            "tpot_p99_ms": round(x["tpot_p99_ms"], 1), "tpot_slo_ms": t.tpot_slo_ms,
            "throughput_rps": round(x["throughput_rps"], 2), "demand_rps": t.demand_rps,
            "meets_slo": bool(x["ttft_p99_ms"] <= (t.ttft_slo_ms or float("inf"))
                              and x["tpot_p99_ms"] <= (t.tpot_slo_ms or float("inf"))),
        }
    return {"seconds": seconds, "tenants": rows,
            "all_slos_met": all(r["meets_slo"] for r in rows.values())}


# A fleet of mostly small models (paper A's setting: small and medium models leave GPUs idle).
FLEET_WEIGHTS = [3, 3, 2, 1, 3, 1]  # in SIX order
FLEET_DEMAND = (0.02, 0.2)  # requests/s per tenant, uniform


def fleet(n: int, seed: int, demand: tuple[float, float], max_batch: int = 8
          ) -> tuple[allocator.TenantSpec, ...]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        m = r.choices(SIX, weights=FLEET_WEIGHTS)[0]
        out.append(allocator.TenantSpec(
            f"t{i}", m, BUILTIN[m], round(r.uniform(*demand), 3), r.choice([512, 1024, 2048]),
            r.choice([64, 128, 256]), r.choice([400.0, 800.0, 1500.0]), r.choice([50.0, 80.0]),
            static_share_pct=25, max_batch=max_batch))
    return tuple(out)


def scale(preds: dict[tuple[str, str], Predictor]) -> dict[str, Any]:
    """Greedy for 1,000 tenants over 128 GPUs: wall and CPU time of ``allocator.greedy`` (memory
    estimates, profiles of every tenant, placement) with the predictors already fitted."""
    ts = fleet(1000, seed=3, demand=FLEET_DEMAND)
    walls, cpus = [], []
    plan = None
    for _ in range(5):
        pb = allocator.Problem(ts, (A100,) * 128, preds)  # fresh: no profile reuse across runs
        t0, c0 = time.perf_counter(), time.process_time()
        plan = allocator.greedy(pb)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert plan is not None
    return {"tenants": 1000, "gpus": 128,
            "greedy_wall_s_median": round(statistics.median(walls), 3),
            "greedy_cpu_s_median": round(statistics.median(cpus), 3),
            "greedy_wall_s_runs": [round(t, 3) for t in walls],
            "placed": sum(a.feasible for a in plan.assignments.values()),
            "total_share_pct": plan.total_share_pct}


def cli_1000(tmp: Path) -> dict[str, Any]:
    """The same fleet through ``gpuguardd allocate --no-oracle`` (a fresh process: parsing,
    predictor fitting on the synthetic profile, greedy, static baseline, output)."""
    lines = ['[[gpu]]', 'model = "A100-SXM4-80GB"', 'count = 128']
    for t in fleet(1000, seed=3, demand=FLEET_DEMAND):
        lines += ["[[tenant]]", f'name = "{t.name}"', f'model = "{t.model}"',
                  f"slo = {{ ttft_p99_ms = {t.ttft_slo_ms}, tpot_p99_ms = {t.tpot_slo_ms} }}",
                  f"demand_rps = {t.demand_rps}", f"prompt_tokens = {t.prompt_tokens}",
                  f"output_tokens = {t.output_tokens}", f"max_batch = {t.max_batch}",
                  "static_share_pct = 25"]
    toml = tmp / "fleet-1000.toml"
    toml.write_text("\n".join(lines) + "\n")
    out = tmp / "fleet-1000.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gpuguardd", "allocate", "--tenants", str(toml),
                    "--no-oracle", "--json", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    res = json.loads(out.read_text())
    return {"process_wall_s": round(wall, 2), "plan_seconds": res["plan_seconds"],
            "wall_seconds_in_command": res["wall_seconds"],
            "placed": sum(t["feasible"] for t in res["tenants"].values())}


def oracle50(preds: dict[tuple[str, str], Predictor]) -> dict[str, Any]:
    """Four random 50-tenant instances over 16 GPUs (about half full) and one over 9 GPUs
    (nearly full): oracle time, whether HiGHS proved optimality, its bound, the greedy's total."""
    out: dict[str, Any] = {}
    cases = [(f"16 GPUs, seed {s}", 16, s) for s in range(4)] + [("9 GPUs, seed 1", 9, 1)]
    for label, gpus, seed in cases:
        ts = tuple(allocator.TenantSpec(
            t.name, t.model, t.arch, t.demand_rps, 1024, 128, t.ttft_slo_ms, t.tpot_slo_ms, 25)
            for t in fleet(50, seed=seed, demand=(0.05, 1.0)))
        pb = allocator.Problem(ts, (A100,) * gpus, preds)
        built = allocator.profiles_of(pb)
        g = allocator.greedy(pb, built)
        t0 = time.perf_counter()
        o = allocator.oracle(pb, built)
        dt = time.perf_counter() - t0
        out[label] = {"oracle_s": round(dt, 2), "optimal": o.optimal,
                      "oracle_total_pct": o.total_share_pct,
                      "lower_bound_pct": round(o.lower_bound_pct or 0, 1),
                      "greedy_total_pct": g.total_share_pct}
    return out


def sweep(plan: allocator.Plan, tmp: Path, seconds: int, first: int, last: int
          ) -> dict[str, Any]:
    """The planned shares over seeds ``first``..``last`` (in-process runs): how many runs miss
    an SLO, which tenant and latency misses how often, each tenant's worst p99 / SLO."""
    missed_runs: list[int] = []
    misses: dict[str, int] = {}
    worst: dict[str, float] = {}
    for seed in range(first, last + 1):
        run = simulate(plan, False, tmp, seconds, seed, in_process=True)
        for name, r in run["tenants"].items():
            for kind in ("ttft", "tpot"):
                ratio = r[f"{kind}_p99_ms"] / (r[f"{kind}_slo_ms"] or float("inf"))
                worst[name] = max(worst.get(name, 0.0), ratio)
                if ratio > 1.0:
                    key = f"{name} {kind.upper()}"
                    misses[key] = misses.get(key, 0) + 1
        if not run["all_slos_met"]:
            missed_runs.append(seed)
    return {"seeds": f"{first}-{last}", "runs": last - first + 1,
            "runs_missing_an_slo": len(missed_runs), "missed_seeds": missed_runs,
            "misses": misses, "worst_p99_over_slo": {k: round(v, 3) for k, v in worst.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile-csv", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sim-seconds", type=int, default=3600)
    ap.add_argument("--sim-seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--sweep", type=int, nargs=2, metavar=("FIRST", "LAST"),
                    help="also run the plan over seeds FIRST..LAST in-process and count the "
                         "runs that miss an SLO (about 0.5 s per seed)")
    ap.add_argument("--slo-confidence", type=float, default=allocator.AllocParams().slo_confidence,
                    help="AllocParams.slo_confidence for the six-model mix")
    ap.add_argument("--slo-window", type=float, default=None,
                    help="AllocParams.slo_window_s (the window an SLO is checked on) for the "
                         "six-model mix; default: --sim-seconds, the window the runs check")
    args = ap.parse_args()
    preds, quality, fit_s = predictors(args.profile_csv)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "predictors": quality, "fit_s": round(fit_s, 2),
    }
    slo_window_s = args.sim_seconds if args.slo_window is None else args.slo_window
    res["mix"], plan = mix(preds, allocator.AllocParams(slo_confidence=args.slo_confidence,
                                                        slo_window_s=slo_window_s))
    res["mix"]["slo_confidence"] = args.slo_confidence
    res["mix"]["slo_window_s"] = slo_window_s
    with tempfile.TemporaryDirectory() as tmp:
        if args.sweep:
            res["sim_sweep"] = sweep(plan, Path(tmp), args.sim_seconds, *args.sweep)
        res["sim_plan"] = {f"seed {s}": simulate(plan, False, Path(tmp), args.sim_seconds, s)
                           for s in args.sim_seeds}
        res["sim_static"] = simulate(plan, True, Path(tmp), args.sim_seconds)
        res["scale"] = scale(preds)
        res["cli_1000"] = cli_1000(Path(tmp))
    res["oracle50"] = oracle50(preds)
    every_fit = list(quality.values())
    checks = {
        "ttft_r2>=0.9": all(q["ttft"]["r2"] >= 0.9 for q in every_fit),
        "tpot_r2>=0.95": all(q["tpot"]["r2"] >= 0.95 for q in every_fit),
        "saving>=25%": res["mix"]["saving_vs_static"] >= 0.25,
        "predicted_slos_met": res["mix"]["all_predicted_slos_met"],
        "simulator_slos_met": all(r["all_slos_met"] for r in res["sim_plan"].values()),
        **({"sweep_slos_met": res["sim_sweep"]["runs_missing_an_slo"] == 0}
           if "sim_sweep" in res else {}),
        "gap<=5%": res["mix"]["gap_to_oracle"] <= 0.05,
        "1000_tenants<1s": res["scale"]["greedy_wall_s_median"] < 1.0,
        "oracle50<30s": all(v["oracle_s"] < 30.0 for v in res["oracle50"].values()),
    }
    res["checks"] = checks
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
