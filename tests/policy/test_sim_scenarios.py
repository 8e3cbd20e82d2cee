"""The ladder closed around the simulator: golden decision traces and the headline effects.

Golden traces pin the decisions (time, action, target, value, reason) of policy ``full`` on the
built-in scenarios, seed 1. A deliberate change of behaviour (policy or simulator physics)
regenerates them with ``GPUGUARD_UPDATE_GOLDEN=1 pytest tests/policy/test_sim_scenarios.py``;
review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuguardd.model.actions import Action, IoThrottle, Migrate, MigResize, MpsLimit

from .simloop import run

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = ("noisy-neighbor", "pcie-hotspot", "azure-conv", "shared-gpu")


def _value(a: Action) -> str:
    if isinstance(a, IoThrottle):
        return f"{a.limit} until {a.expires_at:.0f}" if a.expires_at is not None else str(a.limit)
    if isinstance(a, MpsLimit):
        return f"pct={a.pct}"
    if isinstance(a, Migrate):
        return f"{a.source} -> {a.to}"
    if isinstance(a, MigResize):
        return f"{a.from_profile} -> {a.to_profile} at {a.start}"
    return ""


def _needs_data(scenario: str) -> None:
    from gpuguardd.sim.scenario import ScenarioError, load_scenario

    try:
        load_scenario(scenario, seed=1)
    except ScenarioError as e:
        if "shared data folder not found" in str(e):
            pytest.skip(f"{scenario} replays a trace from the shared data folder: {e}")
        raise


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden_decision_trace(scenario: str) -> None:
    _needs_data(scenario)
    r = run(scenario, "full", 1)
    lines = [
        f"t={t:.0f} {a.kind} {a.key} {_value(a)} | {why}"
        for t, d in r.trace
        for a, why in zip(d.actions, d.reasons, strict=True)
    ]
    path = GOLDEN / f"{scenario}.full.seed1.txt"
    if os.environ.get("GPUGUARD_UPDATE_GOLDEN"):
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    expected = path.read_text(encoding="utf-8").splitlines()
    assert lines == expected, (
        f"decisions on {scenario} changed; if intended, regenerate with "
        "GPUGUARD_UPDATE_GOLDEN=1 and review the diff"
    )


def test_noisy_neighbor_full_beats_static_on_t1_tail_and_violations() -> None:
    static_run = run("noisy-neighbor", "static", 1).results["tenants"]
    static = static_run["t1"]
    full = run("noisy-neighbor", "full", 1)
    t1 = full.results["tenants"]["t1"]
    assert t1["slo_violation_rate"] <= 0.5 * static["slo_violation_rate"]
    assert t1["ttft_p99_ms"] <= 0.75 * static["ttft_p99_ms"]
    kept = [full.results["tenants"][b]["throughput"] / static_run[b]["throughput"]
            for b in ("t2", "t3")]
    assert sum(kept) / len(kept) >= 0.95, f"batch throughput vs static: {kept}"
    assert full.results["mig_reconfigs"] == 0, "no victim outage for a pcie cause"
    moved = [a for _, d in full.trace for a in d.actions if isinstance(a, Migrate)]
    assert [m.tenant for m in moved] == ["t2"], "the ETL, never the protected tenant"


def test_pcie_hotspot_full_moves_the_etl_off_the_victims_switch_and_says_why() -> None:
    r = run("pcie-hotspot", "full", 1)
    moves = [(a, why) for _, d in r.trace for a, why in zip(d.actions, d.reasons, strict=True)
             if isinstance(a, Migrate)]
    assert len(moves) == 1
    a, why = moves[0]
    assert a.tenant == "etl" and a.source.gpu == 3 and a.to.gpu >= 4  # GPUs 4-7: other switches
    assert "cause pcie" in why and "same switch sw1" in why and "move etl gpu3 ->" in why
    static = run("pcie-hotspot", "static", 1).results["tenants"]["llm"]
    llm = r.results["tenants"]["llm"]
    assert llm["slo_violation_rate"] < static["slo_violation_rate"]
    assert llm["ttft_p99_ms"] < static["ttft_p99_ms"]


def test_shared_gpu_full_limits_the_training_jobs_threads_and_lifts_the_limit_after() -> None:
    r = run("shared-gpu", "full", 1)
    mps = [(t, a, why) for t, d in r.trace for a, why in zip(d.actions, d.reasons, strict=True)
           if isinstance(a, MpsLimit)]
    assert mps and mps[0][1].tenant == "train" and mps[0][1].pct == 50
    assert "cause compute" in mps[0][2] and "without MIG isolation" in mps[0][2]
    assert mps[-1][1].pct is None, "lifted once the training job no longer runs"
    static = run("shared-gpu", "static", 1).results["tenants"]["llm"]
    llm = r.results["tenants"]["llm"]
    assert llm["slo_violation_rate"] <= 0.5 * static["slo_violation_rate"]
    assert llm["ttft_p99_ms"] <= 0.75 * static["ttft_p99_ms"]
