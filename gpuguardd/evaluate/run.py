"""Run the controller against the simulated host in virtual time (``gpuguardd simulate``).

The engine, executor and policy are exactly the daemon's; only the clock (virtual, stepping by
``interval_s`` with no sleeping) and the host (the simulator) differ. Ground truth for the
report comes from the simulator's own results, which the controller never sees.
"""

from __future__ import annotations

import collections
import dataclasses
import tempfile
import time
from collections.abc import Callable
from typing import Any

from gpuguardd.config import POLICIES, Config
from gpuguardd.model.actions import Result
from gpuguardd.runtime.engine import Engine, TickReport, policy_for
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from gpuguardd.sim.scenario import Scenario, load_scenario


def sim_config(scenario: Scenario, policy: str, base: Config | None = None) -> Config:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    base = base or Config()
    return dataclasses.replace(
        base,
        daemon=dataclasses.replace(base.daemon, backend="sim"),
        policy=dataclasses.replace(base.policy, name=policy),  # type: ignore[arg-type]
        tenants=scenario.tenant_configs(),
    )


def simulate(
    scenario_ref: str | Scenario,
    *,
    policy: str = "full",
    seconds: float | None = None,
    seed: int | None = None,
    base: Config | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
    detail: bool = False,
) -> dict[str, Any]:
    """Run one scenario under one policy; return the result document of CONTRACTS.md.

    ``detail`` adds ``detail``: every latency tenant's TTFT samples (ms), the per-second
    window-p99 timeline and the scenario's events, for plots.
    """
    wall0 = time.perf_counter()
    scenario = (load_scenario(scenario_ref, seed=seed, seconds=seconds)
                if isinstance(scenario_ref, str) else scenario_ref)
    cfg = sim_config(scenario, policy, base)
    host = scenario.build_host()
    actions: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    timeline: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpuguardd-simulate-") as state_dir:
        executor = Executor(host, Journal(state_dir, wall_clock_now=0.0, durable=False))
        engine = Engine(host, executor, cfg, policy_for(cfg))
        interval = cfg.daemon.interval_s
        now, end = 0.0, float(scenario.seconds)
        while now <= end:
            report = engine.tick(now)
            for o in report.outcomes:
                if o.result is Result.APPLIED:
                    actions[o.action.kind] += 1
                    timeline.append({"t": now, "kind": o.action.kind,
                                     "target": getattr(o.action, "tenant", ""),
                                     "reason": getattr(o.action, "reason", "")})
                elif o.result in (Result.FAILED, Result.UNAVAILABLE):
                    failures[o.action.kind] += 1
            if on_tick is not None:
                on_tick(report)
            now += interval
        engine.shutdown("end of simulation")
        host.close()
    results = host.results()
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "policy": policy,
        "seconds": scenario.seconds,
        "seed": scenario.seed,
        "tenants": results["tenants"],
        "actions": {kind: actions.get(kind, 0) for kind in
                    ("io_throttle", "io_release", "mps_limit", "migrate", "mig_resize",
                     "vgpu_set")},
        "failed_actions": dict(failures),
        "mig_reconfigs": results.get("mig_reconfigs", 0),
        "level_changes": int(getattr(engine.state, "level_changes_total", 0)),
        "action_log": timeline,
        "wall_seconds": round(time.perf_counter() - wall0, 3),
    }
    if detail:
        latency = [t.name for t in cfg.tenants if t.tenant_class == "latency"]
        out["detail"] = {
            "ttft_ms": {n: host.ttft_samples(n)[1].tolist() for n in latency},
            "timeline": host.timeline(),
            "events": [{"t": e.at_s, "tenant": e.tenant, "action": e.action}
                       for e in scenario.events],
        }
    return out
