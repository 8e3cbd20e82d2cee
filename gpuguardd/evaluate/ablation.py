"""``gpuguardd evaluate``: every policy on the same scenario and seeds, side by side.

Per policy: the victims' p99 TTFT (mean ± 95 % CI over seeds), SLO-violation rate, the batch
tenants' throughput normalised to `static` on the same seed, actions, MIG reconfigurations per
hour, level changes per tenant per hour; plus the floor - the victims with every batch tenant
stopped (`alone`, static policy).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from gpuguardd.evaluate.run import simulate
from gpuguardd.evaluate.stats import mean_ci
from gpuguardd.sim.host import EventSpec
from gpuguardd.sim.scenario import Scenario, load_scenario

ALONE = "alone"


def alone(scenario: Scenario) -> Scenario:
    """The same scenario with every non-latency tenant stopped for the whole run."""
    batch = [t.name for t in scenario.tenants if t.tenant_class != "latency"]
    events = tuple(e for e in scenario.events if e.tenant not in batch)
    stops = tuple(EventSpec(0.0, name, "stop") for name in batch)
    return dataclasses.replace(scenario, events=stops + events)


def _one(ref: str, policy: str, seed: int, seconds: float | None,
         detail: bool) -> dict[str, Any]:
    scenario = load_scenario(ref, seed=seed, seconds=seconds)
    if policy == ALONE:
        result = simulate(alone(scenario), policy="static", detail=detail)
        result["policy"] = ALONE
        return result
    return simulate(scenario, policy=policy, detail=detail)


def run_matrix(
    ref: str,
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    seconds: float | None = None,
    workers: int | None = None,
    detail: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    jobs = [(p, s) for s in seeds for p in (*policies, ALONE)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for i, (p, s) in enumerate(jobs):
            results.append(_one(ref, p, s, seconds, detail))
            if progress:
                progress(i + 1, len(jobs), f"{p} seed {s}")
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_one, ref, p, s, seconds, detail): (p, s) for p, s in jobs}
            for i, fut in enumerate(as_completed(futures)):
                results.append(fut.result())
                if progress:
                    p, s = futures[fut]
                    progress(i + 1, len(jobs), f"{p} seed {s}")
    order = {p: i for i, p in enumerate((*policies, ALONE))}
    results.sort(key=lambda r: (order[r["policy"]], r["seed"]))
    return results


def summarise(results: Sequence[dict[str, Any]], victims: Sequence[str],
              batch: Sequence[str]) -> dict[str, Any]:
    """Aggregate per policy over seeds; batch throughput normalised to static per seed."""
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(r)
    static = {r["seed"]: r for r in by_policy.get("static", [])}
    table: dict[str, Any] = {}
    for policy, runs in by_policy.items():
        p99 = [max(r["tenants"][v]["ttft_p99_ms"] for v in victims) for r in runs]
        viol = [sum(r["tenants"][v]["slo_violation_rate"] for v in victims) / len(victims)
                for r in runs]
        norm: list[float] = []
        for r in runs:
            base = static.get(r["seed"])
            if base is None or not batch or policy == ALONE:
                continue
            ratios = [r["tenants"][b]["throughput"] / base["tenants"][b]["throughput"]
                      for b in batch if base["tenants"][b]["throughput"] > 0]
            if ratios:
                norm.append(sum(ratios) / len(ratios))
        hours = [r["seconds"] / 3600 for r in runs]
        n_tenants = max(1, len(runs[0]["tenants"]))
        row = {
            "runs": len(runs),
            "ttft_p99_ms": mean_ci(p99),
            "slo_violation_rate": mean_ci(viol),
            "batch_throughput_norm": mean_ci(norm) if norm else None,
            "actions": mean_ci([sum(r["actions"].values()) for r in runs]),
            "mig_reconfigs_per_hour": mean_ci([r["mig_reconfigs"] / h
                                               for r, h in zip(runs, hours, strict=True)]),
            "level_changes_per_tenant_hour": mean_ci(
                [r["level_changes"] / h / n_tenants for r, h in zip(runs, hours, strict=True)]),
            "downtime_s": mean_ci([sum(r["tenants"][v].get("downtime_s", 0.0) for v in victims)
                                   for r in runs]),
        }
        table[policy] = row
    if "static" in table:
        s_p99 = table["static"]["ttft_p99_ms"][0]
        s_viol = table["static"]["slo_violation_rate"][0]
        for row in table.values():
            row["p99_vs_static"] = row["ttft_p99_ms"][0] / s_p99 if s_p99 else None
            row["violations_vs_static"] = (row["slo_violation_rate"][0] / s_viol
                                           if s_viol else None)
    return table


def format_table(scenario: str, table: dict[str, Any], victims: Sequence[str],
                 seeds: int) -> str:
    def ci(v: tuple[float, float] | None, fmt: str) -> str:
        if v is None:
            return "-"
        return f"{v[0]:{fmt}} ± {v[1]:{fmt}}"

    head = (f"{scenario}: victims {', '.join(victims)}; {seeds} seed(s); mean ± 95 % CI\n"
            f"{'policy':<10} {'p99 TTFT ms':>18} {'SLO-viol %':>14} {'batch thr':>13} "
            f"{'actions':>11} {'MIG/h':>6} {'lvl/ten/h':>9} {'p99/static':>10} {'viol/static':>11}")
    lines = [head, "-" * len(head.splitlines()[1])]
    for policy, row in table.items():
        viol = row["slo_violation_rate"]
        lines.append(
            f"{policy:<10} {ci(row['ttft_p99_ms'], '8.2f'):>18} "
            f"{ci((100 * viol[0], 100 * viol[1]), '5.1f'):>14} "
            f"{ci(row['batch_throughput_norm'], '5.3f'):>13} {ci(row['actions'], '4.1f'):>11} "
            f"{row['mig_reconfigs_per_hour'][0]:6.1f} "
            f"{row['level_changes_per_tenant_hour'][0]:9.1f} "
            f"{_ratio(row.get('p99_vs_static')):>10} {_ratio(row.get('violations_vs_static')):>11}")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def progress_printer(stream: Any = None) -> Callable[[int, int, str], None]:
    stream = stream or sys.stderr
    tty = stream.isatty()

    def show(done: int, total: int, what: str) -> None:
        if tty:
            width = 30
            filled = width * done // total
            stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<24}")
            if done == total:
                stream.write("\n")
        else:
            stream.write(f"evaluate: {done}/{total} done ({what})\n")
        stream.flush()

    return show
