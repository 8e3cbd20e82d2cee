from __future__ import annotations

from dataclasses import replace

import pytest

from gpuguardd.model.actions import VgpuSet
from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import allocator
from gpuguardd.vgpu.replan import (
    Observation,
    ReplanPolicy,
    ReplanState,
    TenantState,
    replan,
)

from .conftest import A100


def spec(name: str, model: str, demand: float) -> allocator.TenantSpec:
    return allocator.TenantSpec(name, model, BUILTIN[model], demand, 1024, 128, 500.0, 60.0)


@pytest.fixture()
def setup(a100_predictors: dict) -> tuple[dict, allocator.Problem, ReplanState]:
    tenants = {"a": spec("a", "Qwen3-4B", 1.0), "b": spec("b", "Qwen3-8B", 0.5)}
    pb = allocator.Problem(tuple(tenants.values()), (A100,), a100_predictors)
    plan = allocator.greedy(pb)
    state = ReplanState({
        n: TenantState(a.share_pct or 0, a.memory_bytes, 0, tenants[n].demand_rps,
                       plan.assignments["b" if n == "a" else "a"].sm_activity)
        for n, a in plan.assignments.items()
    })
    return tenants, pb, state


def obs_of(pb: allocator.Problem, tenants: dict, demand: dict[str, float]) -> dict:
    out = {}
    for n, t in tenants.items():
        t2 = replace(t, demand_rps=demand.get(n, t.demand_rps))
        prof = allocator.build_profile(t2, A100, pb.predictors[(t.model, A100.name)], pb.params)
        out[n] = Observation(t2.demand_rps, prof.activity_units / allocator.UNITS)
    return out


def test_steady_state_emits_nothing(setup: tuple) -> None:
    tenants, pb, state = setup
    res = replan(state, tenants, obs_of(pb, tenants, {}), pb, now=1000.0)
    assert res.actions == ()


def test_demand_surge_raises_the_share_with_a_reason_and_converges(setup: tuple) -> None:
    tenants, pb, state = setup
    obs = obs_of(pb, tenants, {"a": 2.5})
    res = replan(state, tenants, obs, pb, now=1000.0)
    (act,) = [a for a in res.actions if a.tenant == "a"]
    assert isinstance(act, VgpuSet) and act.compute_pct > state.tenants["a"].share_pct
    assert "1→2.5 rps" in act.reason and "raise" in act.reason
    # re-planning on the new state with the same observations converges (no further action)
    again = replan(res.state, tenants, obs, pb, now=2000.0)
    assert [a for a in again.actions if a.tenant == "a"] == []


def test_small_drift_inside_the_band_does_not_lower(setup: tuple) -> None:
    tenants, pb, state = setup
    res = replan(state, tenants, obs_of(pb, tenants, {"a": 0.9}), pb, now=1000.0)
    assert res.actions == ()


def test_lowering_keeps_headroom_and_memory_floor(setup: tuple) -> None:
    tenants, pb, state = setup
    big = ReplanState({**state.tenants, "a": replace(state.tenants["a"], share_pct=60)})
    res = replan(big, tenants, obs_of(pb, tenants, {"a": 0.01}), pb, now=1000.0)
    (act,) = [a for a in res.actions if a.tenant == "a"]
    prof = allocator.build_profile(replace(tenants["a"], demand_rps=0.01), A100,
                                   pb.predictors[("Qwen3-4B", A100.name)], pb.params)
    assert prof.min_share_pct <= act.compute_pct < 60
    assert "lower" in act.reason and "floor" in act.reason


def test_cooldown_budget_and_restartability(setup: tuple) -> None:
    tenants, pb, state = setup
    obs = obs_of(pb, tenants, {"a": 2.5})
    cooling = ReplanState({**state.tenants, "a": replace(state.tenants["a"], changed_at=900.0)})
    res = replan(cooling, tenants, obs, pb, now=1000.0, policy=ReplanPolicy(cooldown_s=300))
    assert [a for a in res.actions if a.tenant == "a"] == []
    assert any(n.startswith("a: cooldown") for n in res.notes)
    spent = ReplanState(state.tenants, restarts=(100.0, 200.0))
    res = replan(spent, tenants, obs, pb, now=1000.0,
                 policy=ReplanPolicy(restart_budget_per_hour=2))
    assert res.actions == () and any("budget" in n for n in res.notes)
    # an hour later the budget is back
    res = replan(spent, tenants, obs, pb, now=3900.0,
                 policy=ReplanPolicy(restart_budget_per_hour=2))
    assert "a" in [a.tenant for a in res.actions]
    fixed = ReplanState({**state.tenants, "a": replace(state.tenants["a"], restartable=False)})
    res = replan(fixed, tenants, obs, pb, now=1000.0)
    assert [a for a in res.actions if a.tenant == "a"] == []
    assert any(n.startswith("a: not restartable") for n in res.notes)


def test_raise_is_clipped_to_the_gpu_room(setup: tuple) -> None:
    tenants, pb, state = setup
    full = ReplanState({**state.tenants, "b": replace(state.tenants["b"],
                                                      share_pct=100 - state.tenants["a"].share_pct
                                                      - 1)})
    res = replan(full, tenants, obs_of(pb, tenants, {"a": 3.0}), pb, now=1000.0)
    acts = [a for a in res.actions if a.tenant == "a"]
    assert acts and acts[0].compute_pct == state.tenants["a"].share_pct + 1
    assert any("has room" in n for n in res.notes)


# -- ski rental: a raise's restart is paid for by the misses it ends ----------------------------

def _with_misses(obs: dict, name: str, missed: int | None) -> dict:
    return {**obs, name: replace(obs[name], missed=missed)}


def test_a_due_raise_waits_until_the_misses_pay_for_its_restart(setup: tuple) -> None:
    tenants, pb, state = setup
    policy = ReplanPolicy(restart_outage_s=30.0)
    # 2.5 rps needs more share but stays under capacity: price 30 s x 2.5 rps = 75 requests
    obs = _with_misses(obs_of(pb, tenants, {"a": 2.5}), "a", 10)
    now = 1000.0
    for tick in range(1, 8):  # 10 .. 70 missed: still cheaper than the restart
        res = replan(state, tenants, obs, pb, now=now, policy=policy)
        assert [a for a in res.actions if a.tenant == "a"] == []
        assert res.state.tenants["a"].damage == pytest.approx(10 * tick, rel=0.01)  # decaying
        assert any(n.startswith("a: holding at") and "< the raise's restart 30 s x 2.5 rps = 75"
                   in n for n in res.notes), res.notes
        state, now = res.state, now + 2.0
    res = replan(state, tenants, obs, pb, now=now, policy=policy)
    (act,) = [a for a in res.actions if a.tenant == "a"]
    assert act.compute_pct > state.tenants["a"].share_pct
    assert "80 requests missed the SLO >= the raise's restart" in act.reason
    assert res.state.tenants["a"].damage == 0.0


def test_misses_count_only_while_a_raise_is_due_and_not_after_a_restart(setup: tuple) -> None:
    tenants, pb, state = setup
    policy = ReplanPolicy(restart_outage_s=30.0)
    due = replan(state, tenants, _with_misses(obs_of(pb, tenants, {"a": 2.5}), "a", 40), pb,
                 now=1000.0, policy=policy)
    assert due.state.tenants["a"].damage == 40
    # demand back to what the share covers: stray misses are not counted, the count decays
    calm = replan(due.state, tenants, _with_misses(obs_of(pb, tenants, {}), "a", 5), pb,
                  now=4600.0, policy=policy)
    assert calm.actions == () and calm.state.tenants["a"].damage == pytest.approx(20.0)
    # within two restart outages of a share change the misses are its backlog
    fresh = ReplanState({**state.tenants, "a": replace(state.tenants["a"], changed_at=980.0)})
    backlog = replan(fresh, tenants, _with_misses(obs_of(pb, tenants, {"a": 2.5}), "a", 40), pb,
                     now=1000.0, policy=policy)
    assert backlog.actions == () and backlog.state.tenants["a"].damage == 0.0


@pytest.mark.parametrize(("demand", "missed", "why"),
                         [(6.0, 0, "overloaded: capacity"), (2.5, None, None)])
def test_an_overloaded_or_unobservable_tenant_is_raised_at_once(
        setup: tuple, demand: float, missed: int | None, why: str | None) -> None:
    tenants, pb, state = setup
    # 6 rps: beyond what its share can serve at all; 2.5 rps: within it, misses unknown
    obs = obs_of(pb, tenants, {"a": demand})
    res = replan(state, tenants, _with_misses(obs, "a", missed), pb, now=1000.0,
                 policy=ReplanPolicy(restart_outage_s=30.0))
    (act,) = [a for a in res.actions if a.tenant == "a"]
    assert act.compute_pct > state.tenants["a"].share_pct
    assert "ski rental" not in act.reason
    if why is None:
        assert "overloaded" not in act.reason  # raised on the prediction alone
    else:
        assert why in act.reason
