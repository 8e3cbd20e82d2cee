"""Benchmarks of the vGPU allocator (issue 6). Run from the repository root:

    /work/venv/bin/python benchmarks/bench_allocator.py [--profile-csv FILE] [--json FILE]

Targets (exit 1 if one is missed):
  - predictors: held-out R² >= 0.9 (TTFT) and >= 0.95 (TPOT) for every model
  - six-model mix (etc/allocate-example.toml): plan <= 75 % of the static total, every tenant's
    predicted p99 within its SLO, greedy within 5 % of the oracle
  - 1,000 tenants over 128 GPUs: greedy (profiles + placement) < 1 s
  - 50 tenants: oracle < 30 s

Profile data: the synthetic profiler (``gpuguardd.vgpu.synthetic``) unless ``--profile-csv``
gives a CSV in the ``gpuguardd fit`` schema (e.g. the simulator's).
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
from gpuguardd.vgpu.gpus import GPUS  # noqa: E402
from gpuguardd.vgpu.predictor import Predictor, fit  # noqa: E402
from gpuguardd.vgpu.profile_data import group, parse_csv  # noqa: E402

A100 = GPUS["A100-SXM4-80GB"]
SIX = ["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "DeepSeek-R1-Distill-Qwen-1.5B",
       "DeepSeek-R1-Distill-Qwen-7B"]


def predictors(csv: Path | None) -> tuple[dict[tuple[str, str], Predictor], dict[str, Any], float]:
    t0 = time.perf_counter()
    if csv is not None:
        groups = group(parse_csv(csv.read_text()))
    else:
        groups = {(m, A100.name): synthetic.profile(BUILTIN[m], A100, np.random.default_rng(11))
                  for m in [*SIX, "llama2-7b"]}
    preds: dict[tuple[str, str], Predictor] = {}
    quality: dict[str, Any] = {}
    for key, rows in sorted(groups.items()):
        p = fit(rows, held_out=0.25, seed=1, pcie_bps=A100.pcie_bps)
        preds[key] = p
        quality[key[0]] = {k: {"r2": round(q.r2, 4), "mape": round(q.mape, 4), "rows": q.rows}
                           for k, q in p.quality.items()}
    return preds, quality, time.perf_counter() - t0


def mix(preds: dict[tuple[str, str], Predictor]) -> dict[str, Any]:
    data = tomllib.loads((ROOT / "etc" / "allocate-example.toml").read_text())
    ts = tuple(allocator.TenantSpec(
        t["name"], t["model"], BUILTIN[t["model"]], t["demand_rps"], t["prompt_tokens"],
        t["output_tokens"], t["slo"]["ttft_p99_ms"], t["slo"]["tpot_p99_ms"],
        t["static_share_pct"]) for t in data["tenant"])
    pb = allocator.Problem(ts, (A100,) * data["gpu"][0]["count"], preds)
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
                               "ttft_p99_ms": a.predicted_ttft_p99_ms,
                               "tpot_p99_ms": a.predicted_tpot_p99_ms}
                    for a in g.assignments.values()},
        "greedy_total_pct": g.total_share_pct, "oracle_total_pct": o.total_share_pct,
        "oracle_optimal": o.optimal, "static_total_pct": static_total,
        "static_meets_slo": s.feasible,
        "saving_vs_static": round(1 - g.total_share_pct / static_total, 4),
        "gap_to_oracle": round(g.total_share_pct / o.total_share_pct - 1, 4),
        "all_slos_met": slo_ok and g.feasible,
        "greedy_s": round(t1 - t0, 4), "oracle_s": round(t2 - t1, 4),
    }


# A fleet of mostly small models (paper A's setting: small and medium models leave GPUs idle).
FLEET_WEIGHTS = [3, 3, 2, 1, 3, 1]  # in SIX order


def fleet(n: int, seed: int, demand: tuple[float, float], max_batch: int = 16
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
    ts = fleet(1000, seed=3, demand=(0.02, 0.3))
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
    for t in fleet(1000, seed=3, demand=(0.02, 0.3)):
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
    out: dict[str, Any] = {}
    for label, gpus, seed in (("typical (12 GPUs)", 12, 0), ("tight (9 GPUs)", 9, 1)):
        ts = tuple(allocator.TenantSpec(
            t.name, t.model, t.arch, t.demand_rps, 1024, 128, t.ttft_slo_ms, t.tpot_slo_ms, 25)
            for t in fleet(50, seed=seed, demand=(0.05, 1.0)))
        pb = allocator.Problem(ts, (A100,) * gpus, preds)
        g = allocator.greedy(pb)
        t0 = time.perf_counter()
        o = allocator.oracle(pb)
        dt = time.perf_counter() - t0
        out[label] = {"oracle_s": round(dt, 2), "optimal": o.optimal,
                      "oracle_total_pct": o.total_share_pct,
                      "lower_bound_pct": round(o.lower_bound_pct or 0, 1),
                      "greedy_total_pct": g.total_share_pct}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile-csv", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    preds, quality, fit_s = predictors(args.profile_csv)
    if args.profile_csv is None:
        preds.update({(m, A100.name): p for (m, _), p in preds.items()})
    res = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "predictors": quality, "fit_s": round(fit_s, 2), "mix": mix(preds),
        "scale": scale(preds), "oracle50": oracle50(preds),
    }
    with tempfile.TemporaryDirectory() as tmp:
        res["cli_1000"] = cli_1000(Path(tmp))
    checks = {
        "ttft_r2>=0.9": all(q["ttft"]["r2"] >= 0.9 for q in quality.values()),
        "tpot_r2>=0.95": all(q["tpot"]["r2"] >= 0.95 for q in quality.values()),
        "saving>=25%": res["mix"]["saving_vs_static"] >= 0.25,
        "slos_met": res["mix"]["all_slos_met"],
        "gap<=5%": res["mix"]["gap_to_oracle"] <= 0.05,
        "1000_tenants<1s": res["scale"]["greedy_wall_s_median"] < 1.0,
        "oracle50<30s": res["oracle50"]["typical (12 GPUs)"]["oracle_s"] < 30.0,
    }
    res["checks"] = checks
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
