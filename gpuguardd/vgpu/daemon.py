"""The daemon's vGPU step: Snapshot -> observations -> :func:`replan.replan` -> ``VgpuSet``s.

Pure (no I/O, no clock): files named in the config (predictors JSON, model config.json) are read
by the runtime and handed in as :class:`Inputs`.

Observations per tick, from the Snapshot only, for every ``[tenant.vgpu]`` tenant i on GPU g:

    demand_i     = rate over the last demand_window_s, or, once the tenant has run a whole
                   window since it was last down, max(that, rate over the window's last third)
                   rate = Σ ttft.count of the ticks / their span                     (rps)

A restart (a share change) starts the window afresh at the restart: the ticks it is down count
no first tokens and the requests queued meanwhile are served in a burst once it is up, so a
window covering both reads the arrival rate; its last third alone would read the burst, hence
the wait before that faster estimate (tighten fast, but not on a restart's own backlog).

    own_i        = footprint(spec_i at demand_i)     (its roofline activity, allocator model)
    background_g = max(0, sm_util_g - Σ_{i on g, observed} own_i)
                   (measured activity of co-runners that are not planned here; 0 on a GPU
                   where only planned tenants run, see ``step``)

A tenant is planned once its window is full (span ≥ demand_window_s); ``replan`` then raises
at once when the requirement exceeds the share and lowers only past the bands, with cooldown,
the restart budget and the memory-feasible floor. ``absorb`` undoes the planner's bookkeeping
for a ``VgpuSet`` that was not applied (failed, unavailable, dry run): such a share is not
counted as set and spends no restart budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpuguardd.config import Config, ConfigError, TenantConfig
from gpuguardd.model.actions import Outcome, Result, VgpuSet
from gpuguardd.model.llm import BUILTIN, LlmArch
from gpuguardd.model.snapshot import Snapshot
from gpuguardd.vgpu import builtin, memory, scalar
from gpuguardd.vgpu.gpus import GPUS, GpuSpec
from gpuguardd.vgpu.predictor import Predictor
from gpuguardd.vgpu.replan import Observation, ReplanPolicy, ReplanState, TenantState, replan

#: a tenant that ran less than this part of the window is not planned yet
FULL_WINDOW = 1.0
#: the part of the demand window whose rate alone may raise the demand estimate
RECENT = 1.0 / 3.0


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the runtime read from files named in the config."""

    predictors: Mapping[tuple[str, str], Predictor] = field(default_factory=dict)
    model_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by tenant


@dataclass(frozen=True, slots=True)
class TenantView:
    """What ``/status`` and the exporter show per vGPU tenant."""

    share_pct: int | None
    memory_bytes: int
    gpu: int | None
    demand_rps: float | None
    window_s: float
    last_change_at: float | None
    last_reason: str


@dataclass(frozen=True, slots=True)
class VgpuState:
    specs: Mapping[str, scalar.TenantSpec]
    memory_bytes: Mapping[str, int]
    initial_share: Mapping[str, int | None]
    predictors: Mapping[tuple[str, str], Predictor]
    problem: scalar.Problem | None = None
    replan: ReplanState = field(default_factory=lambda: ReplanState({}))
    #: per tenant, (tick time, first tokens counted in that tick) while it ran
    history: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    #: per tenant, when it came up after it was last down (or was first seen running)
    up_at: Mapping[str, float] = field(default_factory=dict)
    last_tick: float | None = None
    #: tenant states before this tick's actions, to undo one that was not applied
    before: Mapping[str, TenantState] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: tenants whose share lever failed permanently (never proposed again)
    unavailable: frozenset[str] = frozenset()

    def settled(self, name: str, window_s: float) -> bool:
        up = self.up_at.get(name)
        return (up is not None and self.last_tick is not None
                and self.last_tick - up >= window_s)

    def view(self, window_s: float) -> dict[str, TenantView]:
        out: dict[str, TenantView] = {}
        for name in self.specs:
            ts = self.replan.tenants.get(name)
            out[name] = TenantView(
                share_pct=ts.share_pct if ts else self.initial_share[name],
                memory_bytes=self.memory_bytes[name], gpu=ts.gpu if ts else None,
                demand_rps=demand(self.history.get(name, ()), window_s,
                                  recent=self.settled(name, window_s)),
                window_s=window_s, last_change_at=ts.changed_at if ts else None,
                last_reason=self.reasons.get(name, ""))
        return out


def _arch(t: TenantConfig, inputs: Inputs, errors: list[str], path: str) -> LlmArch | None:
    v = t.vgpu
    assert v is not None
    if v.model_config is not None:
        cfg = inputs.model_configs.get(t.name)
        if cfg is None:
            errors.append(f"{path}.model_config: {v.model_config} was not read")
            return None
        try:
            return LlmArch.from_hf_config(v.model or t.name, cfg)
        except (KeyError, TypeError, ValueError) as e:
            errors.append(f"{path}.model_config: {v.model_config}: {e}")
            return None
    assert v.model is not None  # config validation
    return BUILTIN[v.model]


def initial(config: Config, inputs: Inputs) -> VgpuState:
    """Specs and memory limits from the config; raises ConfigError naming key paths."""
    errors: list[str] = []
    if config.vgpu.gpu_model is not None and config.vgpu.gpu_model not in GPUS:
        errors.append(f"vgpu.gpu_model: unknown GPU {config.vgpu.gpu_model!r}; known: "
                      f"{', '.join(sorted(GPUS))}")
    specs: dict[str, scalar.TenantSpec] = {}
    mems: dict[str, int] = {}
    shares: dict[str, int | None] = {}
    for i, t in enumerate(config.tenants):
        v = t.vgpu
        if v is None:
            continue
        arch = _arch(t, inputs, errors, f"tenant[{i}].vgpu")
        if arch is None:
            continue
        specs[t.name] = scalar.TenantSpec(
            name=t.name, model=v.model or arch.name, arch=arch, demand_rps=0.0,
            prompt_tokens=v.prompt_tokens, output_tokens=v.output_tokens,
            ttft_slo_ms=t.slo.ttft_p99_ms, tpot_slo_ms=t.slo.tpot_p99_ms,
            max_batch=v.max_batch, prompt_tokens_p99=v.prompt_tokens_p99)
        mems[t.name] = v.memory_bytes or memory.estimate(
            arch, prompt_tokens=v.prompt_tokens, output_tokens=v.output_tokens,
            max_batch=v.max_batch).total_bytes
        shares[t.name] = v.initial_share_pct
    if errors:
        raise ConfigError(errors)
    return VgpuState(specs, mems, shares, dict(inputs.predictors))


def policy_of(config: Config) -> ReplanPolicy:
    v = config.vgpu
    return ReplanPolicy(demand_band=v.demand_band, activity_band=v.activity_band,
                        lower_band_pct=v.lower_band_pct, headroom_pct=v.headroom_pct,
                        cooldown_s=v.cooldown_s, restart_budget_per_hour=v.restart_budget_per_hour,
                        restart_outage_s=v.restart_outage_s)


def _trim(h: tuple[tuple[float, int], ...], now: float,
          window: float) -> tuple[tuple[float, int], ...]:
    """Keep the ticks of the last ``window`` seconds plus the one marking its start."""
    while len(h) > 2 and now - h[1][0] >= window:
        h = h[1:]
    return h


def _rate(history: Sequence[tuple[float, int]]) -> float:
    span = history[-1][0] - history[0][0]
    return sum(n for _, n in history[1:]) / span if span > 0 else 0.0


def demand(history: Sequence[tuple[float, int]], window_s: float, *,
           recent: bool = True) -> float | None:
    """Requests per second, or None before a full window. The first tick only marks the start:
    its count covers time before it.

        demand = max(rate over the window, rate over its last RECENT part)   (``recent``)

    so that a rise shows within a third of the window (tighten fast) while a fall needs the
    whole window to show (relax slowly)."""
    if len(history) < 2:
        return None
    now = history[-1][0]
    if now - history[0][0] < FULL_WINDOW * window_s - 1e-9:
        return None
    if not recent:
        return _rate(history)
    start = next(i for i, (t, _) in enumerate(history) if now - t <= RECENT * window_s)
    tail = history[max(0, start - 1):]
    return max(_rate(history), _rate(tail) if len(tail) >= 2 else 0.0)


def _gpu_spec(config: Config, snapshot: Snapshot, gpu: int) -> GpuSpec | str:
    name = config.vgpu.gpu_model
    if name is None:
        try:
            name = snapshot.topology.gpu(gpu).name
        except KeyError:
            return f"GPU {gpu} is not in the topology"
    spec = GPUS.get(name)
    if spec is None:
        return (f"GPU {gpu} is a {name!r}, for which no GPU constants are known; set "
                f"vgpu.gpu_model to one of {', '.join(sorted(GPUS))}")
    return spec


def _problem(state: VgpuState, snapshot: Snapshot, config: Config,
             notes: list[str]) -> scalar.Problem | None:
    n = max((g.index for g in snapshot.topology.gpus), default=-1) + 1
    gpus: list[GpuSpec] = []
    for g in range(n):
        spec = _gpu_spec(config, snapshot, g)
        if isinstance(spec, str):
            notes.append(spec)
            return None
        gpus.append(spec)
    preds = dict(state.predictors)
    for s in state.specs.values():
        for spec in {g.name: g for g in gpus}.values():
            if (s.model, spec.name) not in preds:
                if config.vgpu.predictors is not None:
                    notes.append(f"{s.name}: {config.vgpu.predictors} has no predictor for "
                                 f"({s.model}, {spec.name}); using the built-in one")
                preds[(s.model, spec.name)] = builtin.predictor(s.arch, spec)
    params = scalar.AllocParams(slo_window_s=config.vgpu.slo_window_s,
                                slo_confidence=config.vgpu.slo_confidence)
    return scalar.Problem(tuple(state.specs.values()), tuple(gpus), preds, params)


def step(
    state: VgpuState, snapshot: Snapshot, config: Config, *, hold: frozenset[str] = frozenset(),
) -> tuple[VgpuState, tuple[VgpuSet, ...], tuple[str, ...]]:
    """One tick. ``hold``: tenants another lever acts on this tick (one restart at a time)."""
    now = snapshot.now
    window = config.vgpu.demand_window_s
    notes: list[str] = []
    history = dict(state.history)
    up_at = dict(state.up_at)
    tenants = dict(state.replan.tenants)
    for name in state.specs:
        s = snapshot.tenants.get(name)
        running = s is not None and s.running and s.placement is not None
        h = history.get(name, ())
        if not running:
            up_at.pop(name, None)
            if h:  # a known tenant that is down: no first tokens in this tick
                history[name] = _trim((*h, (now, 0)), now, window)
            continue
        assert s is not None and s.placement is not None
        up_at.setdefault(name, now)
        history[name] = _trim((*h, (now, s.latency.ttft.count)), now, window)
        restartable = s.restartable and name not in state.unavailable
        if name not in tenants:
            share = (state.initial_share[name] or s.share_pct or 100)
            tenants[name] = TenantState(share, state.memory_bytes[name], s.placement.gpu,
                                        demand_rps=0.0, activity_others=0.0,
                                        restartable=restartable)
        elif tenants[name].gpu != s.placement.gpu or tenants[name].restartable != restartable:
            tenants[name] = replace(tenants[name], gpu=s.placement.gpu, restartable=restartable)
    problem = state.problem
    if problem is None and tenants:
        problem = _problem(state, snapshot, config, notes)
    rstate = replace(state.replan, tenants=tenants)
    out = replace(state, history=history, up_at=up_at, last_tick=now, problem=problem,
                  replan=rstate, before={})
    if problem is None:
        return replace(out, notes=tuple(notes)), (), tuple(notes)
    observed: dict[str, Observation] = {}
    specs: dict[str, scalar.TenantSpec] = {}
    own: dict[int, float] = {}
    for name, ts in tenants.items():
        d = demand(history.get(name, ()), window, recent=out.settled(name, window))
        if d is None:
            continue
        if not 0 <= ts.gpu < len(problem.gpus):
            notes.append(f"{name}: GPU {ts.gpu} is not in the topology the plan was made for")
            continue
        spec = replace(state.specs[name], demand_rps=d)
        gpu = problem.gpus[ts.gpu]
        pred = problem.predictors[(spec.model, gpu.name)]
        batch = scalar.point(spec, pred, problem.params, ts.share_pct, 0.0).batch
        act = scalar.footprint(spec, gpu, batch)
        # a held tenant still counts as a co-runner
        observed[name] = Observation(d, act, _missed(snapshot, spec))
        if name not in hold:
            specs[name] = spec
        own[ts.gpu] = own.get(ts.gpu, 0.0) + act
    if not specs:
        return replace(out, notes=tuple(notes)), (), tuple(notes)
    # Unplanned co-runners (a training job, a server without [tenant.vgpu]) are measured:
    # sm_util minus the planned tenants' footprints. Only where such a co-runner runs: time
    # slicing stretches a capped tenant's busy time, so a GPU holding only planned tenants
    # reads near-busy while their work (footprints, in whole-GPU time) is small; subtracting
    # the footprints then would count the stretch as a phantom co-runner.
    unplanned = {s.placement.gpu for n, s in snapshot.tenants.items()
                 if n not in state.specs and s.running and s.placement is not None}
    background: dict[int, float] = {}
    for g in snapshot.gpus:
        if g.gpu in own and g.gpu in unplanned and g.sm_util is not None:
            background[g.gpu] = max(0.0, g.sm_util - own[g.gpu])
    res = replan(rstate, specs, observed, problem, now, policy_of(config), background)
    reasons = dict(state.reasons)
    for a in res.actions:
        reasons[a.tenant] = a.reason
    notes += res.notes
    before = {a.tenant: tenants[a.tenant] for a in res.actions}
    return (replace(out, replan=res.state, before=before, reasons=reasons, notes=tuple(notes)),
            res.actions, tuple(notes) + tuple(a.reason for a in res.actions))


def _missed(snapshot: Snapshot, spec: scalar.TenantSpec) -> int | None:
    """This tick's requests over the tenant's SLOs beyond the 1 % a p99 SLO allows, None when
    its latency source is not answering."""
    s = snapshot.tenants.get(spec.name)
    if s is None or not s.latency.ok:
        return None
    over = s.latency.missed(spec.ttft_slo_ms / 1e3 if spec.ttft_slo_ms is not None else None,
                            spec.tpot_slo_ms / 1e3 if spec.tpot_slo_ms is not None else None)
    return max(0, over - round(0.01 * s.latency.requests))


def absorb(state: VgpuState, outcomes: Sequence[Outcome], now: float) -> VgpuState:
    """A share counts as set only when the executor applied it (or found it in place)."""
    tenants = dict(state.replan.tenants)
    restarts = list(state.replan.restarts)
    history = dict(state.history)
    unavailable = set(state.unavailable)
    for o in outcomes:
        a = o.action
        if not isinstance(a, VgpuSet) or a.tenant not in state.before:
            continue
        if o.result in (Result.APPLIED, Result.UNCHANGED):
            history[a.tenant] = ((now, 0),)  # restarted: a fresh window from the restart
            continue
        prev = state.before[a.tenant]
        if o.result is Result.DRY_RUN:
            # nothing changed, but the cooldown still spaces the proposals out
            tenants[a.tenant] = replace(prev, changed_at=tenants[a.tenant].changed_at)
        elif o.result is Result.UNAVAILABLE:
            tenants[a.tenant] = replace(prev, restartable=False)
            unavailable.add(a.tenant)
        else:
            tenants[a.tenant] = prev
        if now in restarts:
            restarts.remove(now)
    return replace(state, replan=ReplanState(tenants, tuple(restarts), state.replan.at),
                   history=history, before={}, unavailable=frozenset(unavailable))


def total_share_pct(state: VgpuState) -> int:
    return sum(ts.share_pct for ts in state.replan.tenants.values())
