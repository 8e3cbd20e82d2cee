"""``gpuguardd allocate --tenants FILE [--gpus N] [--oracle|--no-oracle] [--json FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuguardd.config import ConfigError
from gpuguardd.model.llm import BUILTIN, LlmArch, ModelConfigError

if TYPE_CHECKING:  # numpy/scipy load only when the command runs (the daemon's RSS)
    from gpuguardd.vgpu import allocator
    from gpuguardd.vgpu.gpus import GpuSpec
    from gpuguardd.vgpu.predictor import Predictor

ORACLE_MAX_TENANTS = 50


def register(sub: Any) -> None:
    p = sub.add_parser("allocate", help="minimal vGPU shares for LLM tenants (HAMi)")
    p.add_argument("--tenants", required=True, metavar="FILE", help="allocation input (TOML)")
    p.add_argument("--gpus", type=int, metavar="N", help="use N GPUs of the first [[gpu]] model")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--oracle", dest="oracle", action="store_true", default=None,
                   help="also run the exact MILP oracle (default: only up to 50 tenants)")
    g.add_argument("--no-oracle", dest="oracle", action="store_false")
    p.add_argument("--predictors", metavar="FILE",
                   help="predictors from `gpuguardd fit` "
                        "(default: fitted on the synthetic profile)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON ('-' = stdout)")
    p.set_defaults(handler=handle)


def _fail(path: str, errors: list[str]) -> int:
    for e in errors:
        print(f"{path}: {e}", file=sys.stderr)
    return 2


def load_problem(
    path: Path, gpus_override: int | None, predictors_file: str | None
) -> tuple[allocator.Problem, dict[str, str]]:
    """Read and validate everything; raises ConfigError with key paths."""
    from gpuguardd.vgpu import alloc_input, allocator, builtin
    from gpuguardd.vgpu.gpus import GPUS
    from gpuguardd.vgpu.predictor import PredictorError, predictors_from_json

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(["no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    inp = alloc_input.from_dict(data)
    errors: list[str] = []
    archs: dict[str, tuple[str, LlmArch]] = {}
    for i, t in enumerate(inp.tenants):
        if t.model_config is None:
            assert t.model is not None
            archs[t.name] = (t.model, BUILTIN[t.model])
            continue
        cfg_path = Path(t.model_config)
        if not cfg_path.is_absolute():
            cfg_path = path.parent / cfg_path
        label = t.model or cfg_path.stem
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ModelConfigError("config.json must be an object")
            archs[t.name] = (label, LlmArch.from_hf_config(label, cfg))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ModelConfigError) as e:
            errors.append(f"tenant[{i}].model_config: {cfg_path}: {e}")
    preds: dict[tuple[str, str], Predictor] = {}
    if predictors_file is not None:
        try:
            preds = predictors_from_json(json.loads(Path(predictors_file).read_text("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, PredictorError) as e:
            errors.append(f"--predictors {predictors_file}: {e}")
    if gpus_override is not None and gpus_override < 1:
        errors.append("--gpus: must be >= 1")
    if errors:
        raise ConfigError(errors)
    if gpus_override is not None:
        gpus: tuple[GpuSpec, ...] = (GPUS[inp.gpu[0].model],) * gpus_override
    else:
        gpus = tuple(GPUS[g.model] for g in inp.gpu for _ in range(g.count))
    tenants = tuple(
        allocator.TenantSpec(
            name=t.name, model=archs[t.name][0], arch=archs[t.name][1],
            demand_rps=t.demand_rps, prompt_tokens=t.prompt_tokens,
            output_tokens=t.output_tokens, ttft_slo_ms=t.slo.ttft_p99_ms,
            tpot_slo_ms=t.slo.tpot_p99_ms, static_share_pct=t.static_share_pct,
            max_batch=t.max_batch, input_bytes_per_request=t.input_bytes_per_request,
            prompt_tokens_p99=t.prompt_tokens_p99,
        )
        for t in inp.tenants
    )
    source: dict[str, str] = {}
    for label, arch in {a[0]: a[1] for a in archs.values()}.items():
        for spec in {g.name: g for g in gpus}.values():
            if (label, spec.name) in preds:
                source[f"{label}|{spec.name}"] = "fitted"
            else:
                # the shipped fit of a built-in model, else a fresh fit on the synthetic
                # profile: either way the synthetic profile's predictor
                preds[(label, spec.name)] = builtin.predictor(arch, spec)
                source[f"{label}|{spec.name}"] = "synthetic"
    params = allocator.AllocParams(slo_window_s=inp.slo_window_s,
                                   slo_confidence=inp.slo_confidence)
    return allocator.Problem(tenants, gpus, preds, params), source


def result_dict(
    problem: allocator.Problem, plan: allocator.Plan, static: allocator.Plan,
    oracle: allocator.Plan | None, timings: dict[str, float], source: dict[str, str],
) -> dict[str, Any]:
    tenants: dict[str, Any] = {}
    for name, a in plan.assignments.items():
        row: dict[str, Any] = {
            "gpu": a.gpu, "share_pct": a.share_pct, "memory_bytes": a.memory_bytes,
            "predicted_ttft_p99_ms": a.predicted_ttft_p99_ms,
            "predicted_tpot_p99_ms": a.predicted_tpot_p99_ms,
            "batch": a.batch, "sm_activity": a.sm_activity, "feasible": a.feasible,
        }
        if not a.feasible:
            row["reason"] = a.reason
        s = static.assignments[name]
        row["static_share_pct"] = s.share_pct
        row["static_meets_slo"] = s.feasible
        tenants[name] = row
    statics = [t.static_share_pct for t in problem.tenants]
    static_total = sum(s for s in statics if s is not None) if all(
        s is not None for s in statics) else None
    total = plan.total_share_pct
    out: dict[str, Any] = {
        "tenants": tenants,
        "gpus": len(problem.gpus),
        "total_share_pct": total,
        "static_total_share_pct": static_total,
        "saving_vs_static": round(1 - total / static_total, 4) if static_total else None,
        "static_slo_violations": sorted(n for n, a in static.assignments.items()
                                        if not a.feasible),
        "oracle_total_share_pct": oracle.total_share_pct if oracle else None,
        "oracle_optimal": oracle.optimal if oracle else None,
        "oracle_lower_bound_pct": (round(oracle.lower_bound_pct, 2) if oracle
                                   and oracle.lower_bound_pct is not None else None),
        "gap_to_oracle": None,
        "feasible": plan.feasible,
        "predictors": source,
        "plan_seconds": round(timings["plan"], 4),
        "oracle_seconds": round(timings["oracle"], 4) if oracle else None,
        "wall_seconds": round(timings["wall"], 4),
    }
    if oracle is not None and oracle.feasible and oracle.total_share_pct > 0:
        out["gap_to_oracle"] = round(total / oracle.total_share_pct - 1, 4)
    return out


def _table(res: dict[str, Any]) -> str:
    head = f"{'tenant':<20} {'gpu':>3} {'share%':>6} {'static%':>7} {'mem GiB':>7} " \
           f"{'batch':>5} {'ttft p99':>9} {'tpot p99':>9}  note"
    lines = [head, "-" * len(head)]
    for name, t in res["tenants"].items():
        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        lines.append(
            f"{name:<20} {fmt(t['gpu'], 'd'):>3} {fmt(t['share_pct'], 'd'):>6} "
            f"{fmt(t['static_share_pct'], 'd'):>7} {t['memory_bytes'] / 2**30:>7.1f} "
            f"{fmt(t['batch'], 'd'):>5} {fmt(t['predicted_ttft_p99_ms'], '.1f'):>9} "
            f"{fmt(t['predicted_tpot_p99_ms'], '.1f'):>9}  "
            + ("" if t["feasible"] else f"INFEASIBLE: {t['reason']}")
        )
    lines.append("")
    lines.append(f"total share {res['total_share_pct']} % over {res['gpus']} GPUs"
                 + (f"; static {res['static_total_share_pct']} % "
                    f"(saving {100 * res['saving_vs_static']:.1f} %)"
                    if res["saving_vs_static"] is not None else ""))
    bad = res["static_slo_violations"]
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        lines.append(f"static plan misses predicted SLOs (or does not fit) for {len(bad)}: "
                     f"{', '.join(bad[:10])}{more}")
    if res["oracle_total_share_pct"] is not None:
        gap = res["gap_to_oracle"]
        proof = ("optimal" if res["oracle_optimal"] else
                 f"not proven optimal, lower bound {res['oracle_lower_bound_pct']} %")
        lines.append(f"oracle {res['oracle_total_share_pct']} % ({proof})"
                     + (f", greedy gap {100 * gap:.1f} %" if gap is not None else ""))
    lines.append(f"feasible: {str(res['feasible']).lower()}; plan {res['plan_seconds']} s, "
                 f"wall {res['wall_seconds']} s")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    from gpuguardd.vgpu import allocator

    t0 = time.perf_counter()
    try:
        problem, source = load_problem(Path(args.tenants), args.gpus, args.predictors)
    except ConfigError as e:
        return _fail(args.tenants, e.errors)
    t1 = time.perf_counter()
    built = allocator.profiles_of(problem)
    plan = allocator.greedy(problem, built)
    t2 = time.perf_counter()
    static = allocator.static(problem, built)
    run_oracle = args.oracle if args.oracle is not None else (
        len(problem.tenants) <= ORACLE_MAX_TENANTS)
    oracle = None
    t3 = time.perf_counter()
    if run_oracle:
        oracle = allocator.oracle(problem, built)
    t4 = time.perf_counter()
    res = result_dict(problem, plan, static, oracle,
                      {"plan": t2 - t1, "oracle": t4 - t3, "wall": t4 - t0}, source)
    print(_table(res))
    if args.json:
        text = json.dumps(res, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            try:
                Path(args.json).write_text(text, encoding="utf-8")
            except OSError as e:
                print(f"--json {args.json}: {e}", file=sys.stderr)
                return 1
    return 0
