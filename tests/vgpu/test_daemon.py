"""The daemon's vGPU step (pure), and the ladder + vGPU engine policy end to end in the sim."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from gpuguardd import config as cfgmod
from gpuguardd.config import Config, ConfigError, VgpuConfig
from gpuguardd.evaluate.run import sim_config, simulate
from gpuguardd.model.actions import Outcome, Result, VgpuSet
from gpuguardd.model.sketch import Sketch
from gpuguardd.runtime.engine import TickReport, ladder_policy, policy_for
from gpuguardd.sim.scenario import load_scenario
from gpuguardd.vgpu import daemon
from gpuguardd.vgpu.daemon import Inputs

SCENARIO = str(Path(__file__).parent / "data" / "hami-three.toml")
NAMES = ("chat", "code", "rag")
SLO_MS = {"ttft": 400.0, "tpot": 60.0}
INITIAL_TOTAL = 99


# -- demand ------------------------------------------------------------------------------------


def test_demand_needs_a_full_window_and_rises_faster_than_it_falls() -> None:
    ticks = [(float(t), 4) for t in range(0, 62, 2)]  # 2 rps
    assert daemon.demand(ticks[:10], 60.0) is None
    assert daemon.demand(ticks, 60.0) == pytest.approx(2.0)
    # the last third (ticks 40..60 s) at 6 rps: shows in full (the last third's rate)
    rise = ticks[:-11] + [(t, 12) for t, _ in ticks[-11:]]
    assert daemon.demand(rise, 60.0) == pytest.approx(6.0)
    # the last third at 0 rps: only the window's mean falls (19 ticks x 4 over 60 s)
    fall = ticks[:-11] + [(t, 0) for t, _ in ticks[-11:]]
    assert daemon.demand(fall, 60.0) == pytest.approx(76 / 60)


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "error"), [
    ('[vgpu]\nenabled = true\n[[tenant]]\nname = "a"\n',
     "vgpu.enabled: no tenant has a [tenant.vgpu] table"),
    ('[[tenant]]\nname = "a"\nslo = {ttft_p99_ms = 1.0}\n[tenant.vgpu]\nmodel = "gpt-9"\n',
     "tenant[0].vgpu.model: unknown built-in model 'gpt-9'"),
    ('[[tenant]]\nname = "a"\n[tenant.vgpu]\nmodel = "Qwen3-4B"\n',
     "tenant[0].slo: a vGPU tenant needs ttft_p99_ms or tpot_p99_ms"),
    ('[[tenant]]\nname = "a"\nslo = {ttft_p99_ms = 1.0}\n[tenant.vgpu]\nmodel = "Qwen3-4B"\n'
     'region_dir = "x/../../etc"\n', "tenant[0].vgpu.region_dir: 'x/../../etc' must be"),
    ('[[tenant]]\nname = "a"\nslo = {ttft_p99_ms = 1.0}\n[tenant.vgpu]\nmodel = "Qwen3-4B"\n'
     'pod_uid = "p"\n', "tenant[0].vgpu: pod_uid and container go together"),
    ('[[tenant]]\nname = "a"\nslo = {ttft_p99_ms = 1.0}\n[tenant.vgpu]\nmodel = "Qwen3-4B"\n'
     'container = "a/b"\npod_uid = "p"\n', "tenant[0].vgpu.container: 'a/b' is not"),
    ('[vgpu]\nhami_root = "relative"\n', "vgpu.hami_root: 'relative' must be an absolute"),
    ('[vgpu]\ncooldown_s = -1\n', "vgpu.cooldown_s: must be >= 0.0"),
])
def test_config_errors_name_key_paths(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfgmod.loads(text)
    assert any(error in m for m in e.value.errors), e.value.errors


def test_unknown_gpu_model_and_unread_model_config_are_config_errors() -> None:
    cfg = cfgmod.loads('[vgpu]\nenabled = true\ngpu_model = "V100"\n[[tenant]]\nname = "a"\n'
                       'slo = {ttft_p99_ms = 100.0}\n[tenant.vgpu]\n'
                       'model_config = "/nonexistent/config.json"\n')
    with pytest.raises(ConfigError) as e:
        daemon.initial(cfg, Inputs())
    assert [m.split(":")[0] for m in e.value.errors] == ["vgpu.gpu_model",
                                                          "tenant[0].vgpu.model_config"]
    with pytest.raises(ConfigError, match=r"tenant\[0\]\.vgpu\.model_config: .*nonexistent"):
        policy_for(cfg)


def test_reference_documents_the_vgpu_tables() -> None:
    ref = cfgmod.reference()
    assert "### `[vgpu]`" in ref and "### `[tenant.vgpu]`" in ref
    assert "- `restart_budget_per_hour`" in ref and "- `pod_uid`" in ref


def test_ladder_only_without_vgpu() -> None:
    assert policy_for(Config()) == ladder_policy()


# -- absorb: a share counts only when applied ----------------------------------------------------


def _planned(budget: int = 6, **vgpu: Any) -> tuple[Config, daemon.VgpuState,
                                                     tuple[VgpuSet, ...]]:
    sc = load_scenario(SCENARIO, seconds=60)
    cfg = sim_config(sc, "static", Config(vgpu=VgpuConfig(
        enabled=True, demand_window_s=20.0, restart_budget_per_hour=budget, **vgpu)))
    host = sc.build_host()
    state = daemon.initial(cfg, Inputs())
    acts: tuple[VgpuSet, ...] = ()
    for t in range(0, 24, 2):
        state, acts, _ = daemon.step(state, host.observe(float(t)), cfg)
        if acts:
            break
    return cfg, state, acts


def test_failed_share_change_is_not_counted_as_applied() -> None:
    _, state, acts = _planned()
    assert {a.tenant for a in acts} == set(NAMES)  # all three over-provisioned at 33 %
    assert all(a.compute_pct < 33 for a in acts)
    now = 22.0 if state.last_tick is None else state.last_tick
    outcomes = [Outcome(acts[0], Result.FAILED, "hook exit 3"),
                Outcome(acts[1], Result.UNAVAILABLE, "not restartable"),
                Outcome(acts[2], Result.APPLIED, "")]
    after = daemon.absorb(state, outcomes, now)
    t = after.replan.tenants
    assert t[acts[0].tenant].share_pct == 33 and t[acts[0].tenant].changed_at is None
    assert t[acts[1].tenant].share_pct == 33 and not t[acts[1].tenant].restartable
    assert acts[1].tenant in after.unavailable
    assert t[acts[2].tenant].share_pct == acts[2].compute_pct
    assert after.replan.restarts == (now,)  # only the applied change spent the budget
    assert after.history[acts[2].tenant] == ((now, 0),)  # a fresh window from the restart


def test_restart_budget_caps_the_changes_of_one_tick() -> None:
    _, _, acts = _planned(budget=2)
    assert len(acts) == 2


def test_a_restart_window_counts_the_downtime_and_waits_before_the_fast_estimate() -> None:
    """After a share change the window restarts at the restart: while the tenant is down the
    ticks count nothing, the backlog served after it makes up for it, and the last-third
    estimate (which would read the backlog burst as demand) waits a whole window."""
    cfg, state, acts = _planned()
    now = state.last_tick
    assert now is not None
    state = daemon.absorb(state, [Outcome(a, Result.APPLIED, "") for a in acts], now)
    sc = load_scenario(SCENARIO, seconds=60)
    host = sc.build_host()
    snap = host.observe(now)
    down = dataclasses.replace(snap, now=now + 2.0, tenants={
        n: dataclasses.replace(t, running=False) for n, t in snap.tenants.items()})
    state, _, _ = daemon.step(state, down, cfg)
    assert state.history["chat"] == ((now, 0), (now + 2.0, 0))
    assert "chat" not in state.up_at
    up = dataclasses.replace(snap, now=now + 4.0)
    state, _, _ = daemon.step(state, up, cfg)
    assert state.up_at["chat"] == now + 4.0 and not state.settled("chat", 20.0)


def test_held_tenants_are_not_planned() -> None:
    sc = load_scenario(SCENARIO, seconds=60)
    cfg = sim_config(sc, "static", Config(vgpu=VgpuConfig(enabled=True, demand_window_s=20.0)))
    host = sc.build_host()
    state = daemon.initial(cfg, Inputs())
    for t in range(0, 24, 2):
        state, acts, _ = daemon.step(state, host.observe(float(t)), cfg,
                                     hold=frozenset({"chat"}))
        assert "chat" not in {a.tenant for a in acts}


# -- end to end: simulate() with the ladder + vGPU policy --------------------------------------


Tick = tuple[float, str, bool, Any, Any]  # time, tenant, running, ttft sketch, tpot sketch


def _run(budget: int, seed: int | None = None) -> tuple[
        dict[str, Any], list[tuple[float, dict[str, int]]], list[Tick]]:
    base = Config(vgpu=VgpuConfig(enabled=True, demand_window_s=30.0, cooldown_s=60.0,
                                  restart_budget_per_hour=budget))
    shares: list[tuple[float, dict[str, int]]] = []
    ticks: list[Tick] = []

    def on_tick(r: TickReport) -> None:
        shares.append((r.now, dict(r.state.vgpu_shares)))
        for n in NAMES:
            s = r.snapshot.tenants[n]
            ticks.append((r.now, n, s.running, s.latency.ttft, s.latency.tpot))

    res = simulate(SCENARIO, policy="static", base=base, seed=seed, on_tick=on_tick)
    return res, shares, ticks


def _settled_latency(ticks: list[Tick], sets: list[dict[str, Any]],
                     drain_s: float = 60.0) -> dict[str, tuple[Sketch, Sketch]]:
    """Each tenant's latency where its share and demand are settled. Left out: from each
    restart until ``drain_s`` after it is up again (its queue holds what arrived while it was
    down: the price of a share change, bounded by the restart budget), and for chat the
    reaction to its demand step, from the step (200 s) until ``drain_s`` after it is up from
    its last raise (the share only follows once a third of the demand window has seen it)."""
    last_raise = max((e["t"] for e in sets if e["target"] == "chat"
                      and e["reason"].startswith("raise")), default=None)
    out = {n: (Sketch(), Sketch()) for n in NAMES}
    up = dict.fromkeys(NAMES, 0.0)
    was = dict.fromkeys(NAMES, True)
    chat_settled = float("inf")
    for t, n, running, ttft, tpot in ticks:
        if running and not was[n]:
            up[n] = t
            if n == "chat" and last_raise is not None and t > last_raise:
                chat_settled = min(chat_settled, t + drain_s)
        was[n] = running
        if not running or t - up[n] < drain_s or t == 0.0:
            continue
        if n == "chat" and 200.0 <= t < chat_settled:
            continue
        out[n][0].merge(ttft)
        out[n][1].merge(tpot)
    return out


@pytest.mark.parametrize("seed", [3, 5])
def test_daemon_lowers_over_provisioned_shares_and_raises_one_when_demand_rises(
        seed: int) -> None:
    res, shares, ticks = _run(budget=8, seed=seed)
    sets = [e for e in res["action_log"] if e["kind"] == "vgpu_set"]
    assert not res["failed_actions"]
    at = dict(shares)
    assert sum(at[0.0].values()) == INITIAL_TOTAL
    # lowered as soon as a demand window is full (30 s): 34 % in all, from 99 %
    assert sum(at[40.0].values()) <= 0.5 * INITIAL_TOTAL
    assert max(sum(s.values()) for t, s in shares if t >= 40.0) < INITIAL_TOTAL
    # chat's demand quadruples at 200 s: its share rises above what it had before
    assert max(s["chat"] for t, s in shares if t > 200.0) > at[198.0]["chat"]
    assert any(e["target"] == "chat" and e["reason"].startswith("raise") for e in sets)
    # cooldown: 60 s between two changes of one tenant
    for n in NAMES:
        times = [e["t"] for e in sets if e["target"] == n]
        assert all(b - a >= 60.0 for a, b in itertools.pairwise(times)), (n, times)
    # the SLOs hold in the simulator (ground-truth latencies) wherever the shares are settled
    for n, (ttft, tpot) in _settled_latency(ticks, sets).items():
        assert ttft.count > 100
        for kind, sk in (("ttft", ttft), ("tpot", tpot)):
            p99 = sk.quantile(0.99)
            assert p99 is not None and p99 * 1e3 <= SLO_MS[kind], (n, kind, p99)


def test_daemon_respects_the_restart_budget() -> None:
    res, shares, _ = _run(budget=3)
    sets = [e for e in res["action_log"] if e["kind"] == "vgpu_set"]
    assert len(sets) == 3 and {e["t"] for e in sets} == {30.0}  # < 1 h: the budget is spent
    assert shares[-1][1]["chat"] == dict(shares)[40.0]["chat"]  # no raise left for chat


def test_status_and_gauge_show_the_shares() -> None:
    from gpuguardd.export.metrics import GpuguardCollector

    reports: list[TickReport] = []
    sc = load_scenario(SCENARIO, seconds=40)
    base = Config(vgpu=VgpuConfig(enabled=True, demand_window_s=30.0))
    simulate(sc, policy="static", base=base, on_tick=reports.append)
    last = reports[-1]
    status = last.state.vgpu_status()
    assert set(status["tenants"]) == set(NAMES)
    assert status["total_share_pct"] == sum(v["share_pct"] for v in status["tenants"].values())
    assert status["total_share_pct"] < INITIAL_TOTAL and status["restarts_last_hour"] == 3
    cfg = dataclasses.replace(sim_config(sc, "static", base))
    collector = GpuguardCollector(lambda: cfg, dict)
    collector.publish(last)
    fams = {f.name: f for f in collector.collect()}
    got = {s.labels["tenant"]: s.value for s in fams["gpuguard_tenant_vgpu_share_ratio"].samples}
    assert got == {n: v["share_pct"] / 100 for n, v in status["tenants"].items()}


def test_a_reload_that_disables_vgpu_leaves_the_ladder_alone() -> None:
    sc = load_scenario(SCENARIO, seconds=60)
    on = sim_config(sc, "static", Config(vgpu=VgpuConfig(enabled=True, demand_window_s=20.0)))
    off = dataclasses.replace(on, vgpu=dataclasses.replace(on.vgpu, enabled=False))
    pol = policy_for(on)
    kinds: dict[bool, set[str]] = {}
    for cfg in (on, off):
        host, state = sc.build_host(), pol.initial(on)
        seen: set[str] = set()
        for t in range(0, 24, 2):
            state, d = pol.decide(state, host.observe(float(t)), cfg)
            seen |= {a.kind for a in d.actions}
            assert len(d.reasons) == len(d.actions)
        kinds[cfg.vgpu.enabled] = seen
    assert kinds == {True: {"vgpu_set"}, False: set()}


def test_check_config_reads_the_files_vgpu_names(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from gpuguardd.cli import main

    f = tmp_path / "g.toml"
    f.write_text('[vgpu]\nenabled = true\npredictors = "/nonexistent/p.json"\n[[tenant]]\n'
                 'name = "a"\nslo = {ttft_p99_ms = 100.0}\n[tenant.vgpu]\nmodel = "Qwen3-4B"\n')
    assert main(["check-config", str(f)]) == 2
    assert "vgpu.predictors: /nonexistent/p.json" in capsys.readouterr().err
    f.write_text('[vgpu]\nenabled = true\n[[tenant]]\nname = "a"\nslo = {ttft_p99_ms = 100.0}\n'
                 '[tenant.vgpu]\nmodel = "Qwen3-4B"\n')
    assert main(["check-config", str(f)]) == 0


def test_status_carries_the_kubernetes_patch_for_the_planned_share() -> None:
    sc = load_scenario(SCENARIO, seconds=40)
    cfg = sim_config(sc, "static", Config(vgpu=VgpuConfig(enabled=True, demand_window_s=20.0)))
    chat = next(t for t in cfg.tenants if t.name == "chat")
    assert chat.vgpu is not None
    k8s = dataclasses.replace(chat.vgpu, pod_uid="uid-1", container="vllm",
                              k8s_namespace="llm", k8s_owner="Deployment/chat")
    cfg = dataclasses.replace(cfg, tenants=tuple(
        dataclasses.replace(t, vgpu=k8s) if t.name == "chat" else t for t in cfg.tenants))
    pol = policy_for(cfg)
    host, state = sc.build_host(), pol.initial(cfg)
    for t in range(0, 24, 2):
        state, d = pol.decide(state, host.observe(float(t)), cfg)
        state = pol.absorb(state, [Outcome(a, Result.APPLIED, "") for a in d.actions], float(t))
    st = state.vgpu_status()["tenants"]
    share = st["chat"]["share_pct"]
    assert share < 33 and "k8s_patch" not in st["code"]
    patch = st["chat"]["k8s_patch"]
    assert patch["target"] == {"kind": "Deployment", "namespace": "llm", "name": "chat"}
    limits = patch["strategic_merge_patch"]["spec"]["template"]["spec"]["containers"][0]
    assert limits["name"] == "vllm"
    assert limits["resources"]["limits"]["nvidia.com/gpucores"] == str(share)


def test_the_configured_slo_window_sets_the_plans_margin() -> None:
    """[vgpu] slo_window_s reaches the planner: SLOs held over shorter windows need more."""
    shares = {}
    for window in (60.0, 3600.0):
        _, _, acts = _planned(budget=6, slo_window_s=window)
        assert acts
        shares[window] = sum(a.compute_pct for a in acts)
    assert shares[60.0] > shares[3600.0]
