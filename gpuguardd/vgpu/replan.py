"""Daemon re-planning of vGPU shares: a pure function from (state, observations, now) to actions.

Control law per tenant i, placement fixed (the daemon never migrates here):

    required_i = S_i(level(co-runner activity now), demand now)       (allocator model)
    raise  when required_i > current_i                                 (SLO at risk: fast)
           and either the tenant is overloaded (predicted capacity < demand: its queue grows
           without bound), or more of its requests have missed the SLO while a raise was due
           than the raise's restart delays (restart_outage_s · demand: ski rental - a
           raise's own outage sends every request it delays over the SLO, so a tail that
           misses the SLO less often than that waits), or its misses cannot be observed.
           Misses count beyond the 1 % a p99 SLO allows, not within 2 restart outages of a
           share change (its backlog), and halve every DAMAGE_HALF_LIFE_S
           to S_i(level, demand · (1 + demand_band)): a demand still rising would otherwise
           need another raise, i.e. another restart, within the band
    lower  when current_i - required_i ≥ lower_band_pct
           and the tenant's demand and co-runner activity changed by more than the band
           (|Δdemand| / demand_at_last_plan > demand_band or |Δactivity| > activity_band)
    target = max(required_i, memory-feasible minimum)                 (never below it)
    on lowering, keep ``headroom_pct`` above required (relax slowly, tighten fast)
    per-GPU: Σ targets ≤ 100; raises that do not fit are clipped and reported
    guards: per-tenant cooldown_s since its last change; at most restart_budget share changes
            (each costs a restart) per rolling hour across the host; restartable tenants only

Every emitted ``VgpuSet`` carries the numbers behind it in ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gpuguardd.model.actions import VgpuSet
from gpuguardd.vgpu import scalar
from gpuguardd.vgpu.predictor import Predictor

HOUR_S = 3600.0
#: a tenant's count of missed requests halves over this time (as the ladder's, for victims)
DAMAGE_HALF_LIFE_S = 3600.0
#: misses within this many restart outages of a share change are its backlog, not evidence
BACKLOG_OUTAGES = 2.0


@dataclass(frozen=True, slots=True)
class ReplanPolicy:
    demand_band: float = 0.2  # relative demand change that justifies lowering a share
    activity_band: float = 0.1  # absolute co-runner activity change that does
    lower_band_pct: int = 3  # lowering by fewer points is not worth a restart
    headroom_pct: int = 2  # kept above the requirement when lowering
    cooldown_s: float = 300.0
    restart_budget_per_hour: int = 6
    restart_outage_s: float = 30.0  # what a share change's restart costs the tenant, seconds


@dataclass(frozen=True, slots=True)
class TenantState:
    share_pct: int
    memory_bytes: int
    gpu: int
    demand_rps: float  # demand when the share was last set
    activity_others: float  # co-runner activity when the share was last set
    changed_at: float | None = None
    restartable: bool = True
    #: requests that missed an SLO while a raise was due (decaying; reset by a raise)
    damage: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplanState:
    tenants: Mapping[str, TenantState]
    restarts: tuple[float, ...] = ()  # times of recent share changes (restarts)
    at: float | None = None  # when it was last planned (the misses' decay)


@dataclass(frozen=True, slots=True)
class Observation:
    demand_rps: float
    activity: float  # the tenant's own footprint (SM activity), fraction
    #: requests over an SLO since the last observation; None when they cannot be observed
    missed: int | None = None


@dataclass(frozen=True, slots=True)
class ReplanResult:
    state: ReplanState
    actions: tuple[VgpuSet, ...]
    notes: tuple[str, ...] = field(default=())


def replan(
    state: ReplanState,
    tenants: Mapping[str, scalar.TenantSpec],
    observed: Mapping[str, Observation],
    problem: scalar.Problem,
    now: float,
    policy: ReplanPolicy = ReplanPolicy(),
    background: Mapping[int, float] | None = None,
) -> ReplanResult:
    """``problem`` supplies GPUs, predictors and allocator params; ``tenants`` the specs (the
    observed demand replaces ``demand_rps``); ``background`` adds, per GPU, the activity of
    co-runners that are not planned here (a training job, an unmanaged server)."""
    params = problem.params
    restarts = tuple(t for t in state.restarts if now - t < HOUR_S)
    budget = policy.restart_budget_per_hour - len(restarts)
    # co-runner activity per GPU from observations (own footprint as observed)
    gpu_act: dict[int, float] = dict(background or {})
    for name, ts in state.tenants.items():
        obs = observed.get(name)
        gpu_act[ts.gpu] = gpu_act.get(ts.gpu, 0.0) + (obs.activity if obs else 0.0)
    wants: list[tuple[int, str, int, int, str]] = []  # (priority, name, target, required, why)
    notes: list[str] = []
    dt = max(0.0, now - state.at) if state.at is not None else 0.0
    damage = {n: ts.damage * 0.5 ** (dt / DAMAGE_HALF_LIFE_S) for n, ts in state.tenants.items()}
    for name in sorted(state.tenants):
        ts = state.tenants[name]
        spec = tenants.get(name)
        obs = observed.get(name)
        if spec is None or obs is None:
            continue
        spec = replace(spec, demand_rps=obs.demand_rps)
        gpu = problem.gpus[ts.gpu]
        pred = problem.predictors[(spec.model, gpu.name)]
        others = max(0.0, gpu_act[ts.gpu] - obs.activity)
        lvl = scalar.level_of(round(others * scalar.UNITS), params)
        required = scalar.required_share(spec, gpu, pred, params, lvl)
        floor = scalar.min_share_pct(spec, gpu)
        if required > 100:
            notes.append(f"{name}: no share meets its SLO at demand {obs.demand_rps:g} rps and "
                         f"co-runner activity {others:.2f}; keeping it at the maximum that fits")
            required = 100
        why = (f"demand {ts.demand_rps:g}→{obs.demand_rps:g} rps, co-runner activity "
               f"{ts.activity_others:.2f}→{others:.2f}: required {required} %")
        if required > ts.share_pct:
            backlog = (ts.changed_at is not None
                       and now - ts.changed_at < BACKLOG_OUTAGES * policy.restart_outage_s)
            damage[name] += 0 if backlog else (obs.missed or 0)
            go, rental = _rental(spec, pred, params, ts.share_pct, lvl, obs, damage[name],
                                 policy)
            if not go:
                notes.append(f"{name}: holding at {ts.share_pct} %: {rental}; would raise: "
                             f"{why}")
                continue
            why = f"{why}; {rental}" if rental else why
            ahead = scalar.required_share(
                replace(spec, demand_rps=obs.demand_rps * (1.0 + policy.demand_band)), gpu,
                pred, params, lvl)
            up = min(100, max(required, ahead))
            wants.append((0, name, max(up, floor), required,
                          f"raise {ts.share_pct}→{max(up, floor)} % (covers "
                          f"{obs.demand_rps * (1.0 + policy.demand_band):.3g} rps): {why}"))
            continue
        moved = (abs(obs.demand_rps - ts.demand_rps) > policy.demand_band * max(ts.demand_rps, 1e-9)
                 or abs(others - ts.activity_others) > policy.activity_band)
        target = max(min(required + policy.headroom_pct, ts.share_pct), floor)
        if moved and ts.share_pct - target >= policy.lower_band_pct:
            wants.append((1, name, target, required,
                          f"lower {ts.share_pct}→{target} % (floor {floor} %): {why}"))
    actions: list[VgpuSet] = []
    new_tenants = {n: replace(ts, damage=damage[n]) for n, ts in state.tenants.items()}
    gpu_total: dict[int, int] = {}
    for ts in state.tenants.values():
        gpu_total[ts.gpu] = gpu_total.get(ts.gpu, 0) + ts.share_pct
    for prio, name, target, _required, why in sorted(wants):
        ts = state.tenants[name]
        if not ts.restartable:
            notes.append(f"{name}: not restartable; would {why}")
            continue
        if ts.changed_at is not None and now - ts.changed_at < policy.cooldown_s:
            notes.append(f"{name}: cooldown ({now - ts.changed_at:.0f}/{policy.cooldown_s:g} s); "
                         f"would {why}")
            continue
        if budget <= 0:
            notes.append(f"{name}: restart budget ({policy.restart_budget_per_hour}/h) spent; "
                         f"would {why}")
            continue
        if prio == 0:
            room = 100 - gpu_total[ts.gpu] + ts.share_pct
            if target > room:
                notes.append(f"{name}: GPU {ts.gpu} has room for {room} %, wanted {target} %")
                target = room
                if target <= ts.share_pct:
                    continue
        gpu_total[ts.gpu] += target - ts.share_pct
        budget -= 1
        restarts = (*restarts, now)
        obs = observed[name]
        actions.append(VgpuSet(name, target, ts.memory_bytes, reason=why))
        new_tenants[name] = replace(
            ts, share_pct=target, demand_rps=obs.demand_rps,
            activity_others=max(0.0, gpu_act[ts.gpu] - obs.activity), changed_at=now,
            damage=0.0,
        )
    return ReplanResult(ReplanState(new_tenants, restarts, now), tuple(actions), tuple(notes))


def _rental(spec: scalar.TenantSpec, pred: Predictor, params: scalar.AllocParams,
            share_pct: int, level: int, obs: Observation, damage: float,
            policy: ReplanPolicy) -> tuple[bool, str]:
    """Whether a due raise goes ahead now, and why (ski rental)."""
    if obs.missed is None:
        return True, ""  # misses unobservable: trust the prediction
    capacity = scalar.point(spec, pred, params, share_pct, level * params.grid_step).capacity_rps
    if capacity < obs.demand_rps:
        # overloaded: the queue, and every request's wait, grows without bound
        return True, f"overloaded: capacity {capacity:.3g} < {obs.demand_rps:.3g} rps"
    price = policy.restart_outage_s * obs.demand_rps
    rel = ">=" if damage >= price else "<"
    return damage >= price, (f"{damage:.0f} requests missed the SLO {rel} the raise's restart "
                             f"{policy.restart_outage_s:g} s x {obs.demand_rps:.3g} rps = "
                             f"{price:.0f} (ski rental)")
