"""Minimal vGPU shares for LLM tenants: greedy (paper A), exact MILP oracle, static baseline.

The model both planners optimise (one model, so that the oracle's optimum bounds the greedy):

Service. A tenant runs a continuous-batching engine with ``b`` sequence slots, b from
``batches`` (≤ its ``max_batch``). At share f and co-runner activity A (λ = ``demand_rps``):

    a new request is prefilled on its own:   TTFT1 = TTFT(b=1, f, A)
    prefills steal decode time:              φ = λ · TTFT1,  TPOT_eff = TPOT(b, f, A) / (1 - φ)
    one request holds a slot for             R = TTFT1 + (O - 1) · TPOT_eff
    capacity                                 λ · R ≤ rho_max · b  and  φ ≤ rho_max  (0.85)
    slots are an M/M/b queue:                W99 = ln(100 · C) / (b/R - λ) if C > 1 %, else 0
                                             C = Erlang-C probability that all b slots are busy
    TTFT p99 = TTFT1 · ttft_tail + TPOT(b) + W99    (+ one running decode step)  ≤ τ_ttft
    TPOT p99 = TPOT_eff · tpot_tail                                               ≤ τ_tpot

TPOT(b) at the slot count b over-estimates the step time when fewer sequences are in flight: the
model errs on the safe side. A share is feasible if some b meets all of it; the tenant runs at the
smallest such b (the engine's ``max_num_seqs``).

Interference. Each tenant has an activity footprint a ∈ [0, 1] computed from its demand and the
roofline of its architecture (:func:`footprint`): the fraction of the GPU's time its prefills keep
the SMs computing plus the fraction its decode steps stream HBM. Time slicing does not change the
work, so a does not depend on the share. A tenant on GPU g sees co-runner activity ``A_g - a_i``
(the sum of its co-runners' footprints) for SM activity and, as a conservative bound, also for
DRAM activity (a tenant's DRAM term is part of its SM term, so DRAM activity ≤ SM activity). The
activity is rounded UP to a grid of ``grid_step`` (0.05) before predicting; footprints are counted
in integer units of 1e-4; beyond ``grid_max`` co-runner activity the tenant is infeasible there.

Share. ``S_i(level)`` = the first share, raised in Δ = 1 % steps from the memory-feasible minimum
``ceil(100 · memory / gpu_memory)``, that is feasible at that co-runner level (paper A's
Algorithm 1; computed for all levels at once with numpy). Σ shares on a GPU ≤ 100 %; memory fits.

Greedy: tenants in descending demand order; each goes to the GPU (among the ``candidates`` least
active non-empty GPUs and one empty GPU per GPU model) that minimises the increase of that GPU's
total share, counting the share increase of the tenants already there caused by the newcomer.

Oracle (``scipy.optimize.milp``, HiGHS): binaries x[i,g,k] = tenant i on GPU g with co-runner
activity ≤ level k and share S_i(k); only levels where S_i steps up are kept (the highest level
per distinct share — any lower level with the same share is dominated). y[i,g] = Σ_k x[i,g,k].

    min  Σ S_i(k)·x[i,g,k]
    s.t. Σ_g y[i,g] = 1                          every tenant placed once
         Σ_i,k S_i(k)·x[i,g,k] ≤ 100             share capacity per GPU
         Σ_i mem_i·y[i,g] ≤ mem_g                 memory per GPU
         Σ_{j≠i} a_j·y[j,g] ≤ Σ_k L_k·x[i,g,k] + M·(1 - y[i,g])   co-runner level chosen ≥ actual
         identical GPUs: tenant i only on GPU ≤ i (relabelling symmetry removed)

With S_i non-decreasing in k the optimiser picks the lowest admissible level, i.e. the same
rounded-up level the greedy uses, so the oracle is exact for this model (integer footprints keep
the level test free of floating-point slack).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from gpuguardd.model.llm import LlmArch
from gpuguardd.vgpu import memory
from gpuguardd.vgpu.gpus import GpuSpec
from gpuguardd.vgpu.predictor import Predictor

FloatArray = npt.NDArray[np.float64]
UNITS = 10_000  # activity footprints in integer units of 1e-4
PREFILL_EFFICIENCY = 0.7  # sustained fraction of dense peak in prefill (A100 calibration)
INFEASIBLE = 101


@dataclass(frozen=True, slots=True)
class TenantSpec:
    name: str
    model: str
    arch: LlmArch
    demand_rps: float
    prompt_tokens: int
    output_tokens: int
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    static_share_pct: int | None = None
    max_batch: int = 32
    input_bytes_per_request: float = 0.0


@dataclass(frozen=True, slots=True)
class AllocParams:
    rho_max: float = 0.85
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    grid_step: float = 0.05
    grid_max: float = 1.5
    candidates: int = 16
    oracle_time_limit_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the planners need about one tenant on one GPU model."""

    shares: tuple[int, ...]  # S(level) per grid level, INFEASIBLE when none ≤ 100 %
    activity_units: int
    memory_bytes: int
    min_share_pct: int
    reason: str  # why it is infeasible even alone on an idle GPU ("" if feasible)


@dataclass(frozen=True, slots=True)
class Point:
    """Predicted operating point of a tenant at a share and co-runner level."""

    feasible: bool
    batch: int
    ttft_p99_ms: float
    tpot_p99_ms: float
    capacity_rps: float


@dataclass(frozen=True, slots=True)
class Assignment:
    tenant: str
    gpu: int | None
    share_pct: int | None
    memory_bytes: int
    feasible: bool
    reason: str = ""
    batch: int | None = None
    predicted_ttft_p99_ms: float | None = None
    predicted_tpot_p99_ms: float | None = None
    sm_activity: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    method: str  # "greedy" | "oracle" | "static"
    assignments: dict[str, Assignment]
    optimal: bool = True  # oracle: HiGHS proved optimality
    detail: str = ""

    @property
    def total_share_pct(self) -> int:
        return sum(a.share_pct or 0 for a in self.assignments.values() if a.feasible)

    @property
    def feasible(self) -> bool:
        return all(a.feasible for a in self.assignments.values())


@dataclass(frozen=True, slots=True)
class Problem:
    tenants: tuple[TenantSpec, ...]
    gpus: tuple[GpuSpec, ...]
    predictors: Mapping[tuple[str, str], Predictor]
    params: AllocParams = field(default_factory=AllocParams)


# -- the per-tenant model -----------------------------------------------------------------------


def _levels(params: AllocParams) -> FloatArray:
    n = round(params.grid_max / params.grid_step) + 1
    return np.arange(n, dtype=np.float64) * params.grid_step


def _erlang_c(servers: int, load: FloatArray) -> FloatArray:
    """Probability of waiting in M/M/c with offered load ``load`` Erlangs (vectorised)."""
    load = np.where(np.isfinite(load), load, 1e12)
    b = np.ones_like(load)
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    rho = load / servers
    with np.errstate(divide="ignore", invalid="ignore"):
        c = b / (1.0 - rho * (1.0 - b))
    return np.where(rho < 1.0, np.clip(c, 0.0, 1.0), 1.0)


def _evaluate(
    t: TenantSpec, pred: Predictor, params: AllocParams, share: FloatArray, level: FloatArray
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], FloatArray, FloatArray, FloatArray]:
    """Vectorised over broadcast ``share`` (fraction) x ``level`` (co-runner activity).

    Returns (feasible, batch index, ttft p99, tpot p99, capacity rps) with the batch chosen as
    the smallest feasible one (or the largest allowed one where none is).
    """
    batches = _batches(t, params)
    lam = t.demand_rps / 1000.0  # per ms
    o1 = max(t.output_tokens - 1, 0)
    shape = np.broadcast(share, level).shape
    ok_any = np.zeros(shape, dtype=bool)
    chosen = np.full(shape, len(batches) - 1, dtype=np.int64)
    out_ttft = np.full(shape, np.inf)
    out_tpot = np.full(shape, np.inf)
    out_cap = np.zeros(shape)
    ttft1 = pred.ttft_ms(1, share, level, t.prompt_tokens, t.input_bytes_per_request)
    phi = lam * ttft1  # fraction of time spent in prefills
    for bi, b in reversed(list(enumerate(batches))):  # smallest feasible batch is taken last
        tpot = pred.tpot_ms(b, share, level, t.prompt_tokens, t.output_tokens)
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot_eff = np.where(phi < 1.0, tpot / (1.0 - phi), np.inf)
        resid = ttft1 + o1 * tpot_eff
        slots_rate = b / resid  # requests per ms the b slots complete
        load = lam * resid  # mean concurrency (Little)
        pw = _erlang_c(b, load)
        with np.errstate(divide="ignore", invalid="ignore"):
            w99 = np.where(pw > 0.01, np.log(np.maximum(pw, 1e-300) * 100.0) / (slots_rate - lam),
                           0.0)
        w99 = np.where(slots_rate > lam, w99, np.inf)
        ttft99 = ttft1 * pred.ttft_tail + tpot + w99
        tpot99 = tpot_eff * pred.tpot_tail
        cap = np.minimum(slots_rate, np.where(ttft1 > 0, 1.0 / ttft1, np.inf))
        ok = (lam <= params.rho_max * slots_rate) & (phi <= params.rho_max)
        if t.ttft_slo_ms is not None:
            ok &= ttft99 <= t.ttft_slo_ms
        if t.tpot_slo_ms is not None:
            ok &= tpot99 <= t.tpot_slo_ms
        take = ok | (~ok_any & (bi == len(batches) - 1))
        chosen = np.where(take, bi, chosen)
        out_ttft = np.where(take, ttft99, out_ttft)
        out_tpot = np.where(take, tpot99, out_tpot)
        out_cap = np.where(take, cap * 1000.0, out_cap)
        ok_any |= ok
    return ok_any, chosen, out_ttft, out_tpot, out_cap


def _batches(t: TenantSpec, params: AllocParams) -> list[int]:
    return [b for b in params.batches if b <= t.max_batch] or [1]


def point(
    t: TenantSpec, pred: Predictor, params: AllocParams, share_pct: int, activity: float
) -> Point:
    """The predicted operating point at one share and co-runner activity (already on the grid)."""
    ok, bi, ttft, tpot, cap = _evaluate(
        t, pred, params, np.array(share_pct / 100.0), np.array(activity)
    )
    return Point(bool(ok), _batches(t, params)[int(bi)], float(ttft), float(tpot), float(cap))


def build_profile(t: TenantSpec, gpu: GpuSpec, pred: Predictor, params: AllocParams) -> Profile:
    mem = memory.estimate(
        t.arch, prompt_tokens=t.prompt_tokens, output_tokens=t.output_tokens,
        max_batch=t.max_batch,
    ).total_bytes
    mem_min = memory.min_share_pct(mem, gpu.memory_bytes)
    levels = _levels(params)
    shares = np.arange(1, 101, dtype=np.float64) / 100.0
    ok, *_ = _evaluate(t, pred, params, shares[None, :], levels[:, None])
    ok[:, : max(mem_min - 1, 0)] = False  # Δ = 1 % steps start at the memory-feasible minimum
    first = np.where(ok.any(axis=1), ok.argmax(axis=1) + 1, INFEASIBLE)
    # Enforce monotonicity in the level (more interference never needs less share); the
    # predictor is monotone, this only guards against the batch choice's discreteness.
    first = np.maximum.accumulate(first)
    base = point(t, pred, params, 100, 0.0)
    # The footprint is taken at the tenant's own operating point alone on the GPU (share S(0)):
    # the concurrency there sets how well its decode steps amortise the weight reads.
    alone = point(t, pred, params, int(min(first[0], 100)), 0.0)
    f0 = min(first[0], 100) / 100.0
    ttft1 = float(np.asarray(pred.ttft_ms(1, f0, 0.0, t.prompt_tokens)))
    tpot = float(pred.tpot_ms(alone.batch, f0, 0.0, t.prompt_tokens, t.output_tokens))
    conc = t.demand_rps / 1000.0 * (ttft1 + max(t.output_tokens - 1, 0) * tpot)
    busy = footprint(t, gpu, min(alone.batch, max(1, math.ceil(conc))))
    reason = ""
    if mem_min > 100:
        reason = (f"does not fit in memory: needs {mem / 2**30:.1f} GiB, "
                  f"{gpu.name} has {gpu.memory_bytes / 2**30:.0f} GiB")
    elif first[0] >= INFEASIBLE:
        reason = _why(t, base, params)
    return Profile(
        shares=tuple(int(s) for s in first),
        activity_units=math.ceil(busy * UNITS),
        memory_bytes=mem,
        min_share_pct=min(mem_min, 100),
        reason=reason,
    )


def footprint(t: TenantSpec, gpu: GpuSpec, batch: int) -> float:
    """Co-runner activity this tenant exerts, from the roofline of its own demand:

        u = λ · prefill_flops(P) / (peak · 0.7)                     prefill SM time
          + λ · (O - 1) / n · decode_bytes(P + O/2, n) / hbm         decode steps streaming HBM
        n = min(batch, max(1, λ · R))  sequences per decode step

    The decode term is also its DRAM activity, so DRAM activity ≤ SM activity (see module doc).
    """
    lam = t.demand_rps
    n = max(1.0, float(batch))
    prefill = lam * t.arch.prefill_flops(t.prompt_tokens) / (gpu.peak_flops * PREFILL_EFFICIENCY)
    ctx = t.prompt_tokens + t.output_tokens // 2
    steps = lam * max(t.output_tokens - 1, 0) / n
    decode = steps * t.arch.decode_bytes(ctx, max(1, round(n))) / gpu.hbm_bps
    return min(1.0, prefill + decode)


def _why(t: TenantSpec, base: Point, params: AllocParams) -> str:
    if t.demand_rps > params.rho_max * base.capacity_rps:
        return (f"throughput: demand {t.demand_rps:g} rps exceeds {params.rho_max:g} x capacity "
                f"{base.capacity_rps:.3g} rps even at 100 % share")
    if t.ttft_slo_ms is not None and base.ttft_p99_ms > t.ttft_slo_ms:
        return (f"TTFT p99 {base.ttft_p99_ms:.1f} ms > SLO {t.ttft_slo_ms:g} ms even at 100 % "
                f"share without co-runners")
    return (f"TPOT p99 {base.tpot_p99_ms:.1f} ms > SLO {t.tpot_slo_ms:g} ms even at 100 % share "
            f"without co-runners")


# -- shared helpers -----------------------------------------------------------------------------


def _level_of(units: int, params: AllocParams) -> int:
    step = round(params.grid_step * UNITS)
    return -(-units // step)  # ceil


def _profiles(problem: Problem) -> tuple[dict[tuple[str, str], Profile], list[str]]:
    """Profiles per (tenant, GPU model); errors for tenants without a predictor."""
    cache: dict[tuple[object, ...], Profile] = {}
    out: dict[tuple[str, str], Profile] = {}
    missing: list[str] = []
    for t in problem.tenants:
        for gpu in {g.name: g for g in problem.gpus}.values():
            pred = problem.predictors.get((t.model, gpu.name))
            if pred is None:
                missing.append(f"{t.name}: no predictor for ({t.model}, {gpu.name})")
                continue
            key = (t.model, t.arch, gpu.name, t.demand_rps, t.prompt_tokens, t.output_tokens,
                   t.ttft_slo_ms, t.tpot_slo_ms, t.max_batch, t.input_bytes_per_request)
            prof = cache.get(key)
            if prof is None:
                prof = cache[key] = build_profile(t, gpu, pred, problem.params)
            out[(t.name, gpu.name)] = prof
    return out, missing


def _share_at(prof: Profile, units: int, params: AllocParams) -> int:
    lvl = _level_of(units, params)
    return prof.shares[lvl] if lvl < len(prof.shares) else INFEASIBLE


def _finish(
    problem: Problem, method: str, placed: Mapping[str, int],
    profiles: Mapping[tuple[str, str], Profile],
    reasons: Mapping[str, str], *, shares: Mapping[str, int] | None = None, optimal: bool = True,
    detail: str = "",
) -> Plan:
    """Turn a placement into a plan with predicted latencies at the final co-runner levels.

    ``shares`` fixes the shares (static baseline); otherwise each tenant gets S_i(level)."""
    gpu_units: dict[int, int] = {}
    for name, g in placed.items():
        gpu_units[g] = gpu_units.get(g, 0) + profiles[(name, problem.gpus[g].name)].activity_units
    out: dict[str, Assignment] = {}
    for t in problem.tenants:
        if t.name not in placed:
            mem = next((p.memory_bytes for (n, _), p in profiles.items() if n == t.name), 0)
            out[t.name] = Assignment(t.name, None, None, mem, False,
                                     reasons.get(t.name, "unplaced"))
            continue
        g = placed[t.name]
        gpu = problem.gpus[g]
        prof = profiles[(t.name, gpu.name)]
        others = gpu_units[g] - prof.activity_units
        lvl = _level_of(others, problem.params)
        share = shares[t.name] if shares is not None else _share_at(prof, others, problem.params)
        pred = problem.predictors[(t.model, gpu.name)]
        activity = lvl * problem.params.grid_step
        if share > 100 or lvl >= len(prof.shares):
            out[t.name] = Assignment(t.name, g, None, prof.memory_bytes, False,
                                     f"co-runner activity {others / UNITS:.2f} leaves no share")
            continue
        pt = point(t, pred, problem.params, share, activity)
        ok = pt.feasible and share >= prof.min_share_pct
        reason = "" if ok else _violation(t, pt, share, prof)
        out[t.name] = Assignment(
            t.name, g, share, prof.memory_bytes, ok, reason, pt.batch,
            round(pt.ttft_p99_ms, 3), round(pt.tpot_p99_ms, 3), prof.activity_units / UNITS,
        )
    return Plan(method, out, optimal, detail)


def _violation(t: TenantSpec, pt: Point, share: int, prof: Profile) -> str:
    parts = []
    if share < prof.min_share_pct:
        parts.append(f"share {share} % < memory-feasible minimum {prof.min_share_pct} %")
    if t.ttft_slo_ms is not None and pt.ttft_p99_ms > t.ttft_slo_ms:
        parts.append(f"TTFT p99 {pt.ttft_p99_ms:.1f} ms > {t.ttft_slo_ms:g} ms")
    if t.tpot_slo_ms is not None and pt.tpot_p99_ms > t.tpot_slo_ms:
        parts.append(f"TPOT p99 {pt.tpot_p99_ms:.1f} ms > {t.tpot_slo_ms:g} ms")
    if not parts:
        parts.append(f"throughput: capacity {pt.capacity_rps:.3g} rps too low for "
                     f"{t.demand_rps:g} rps")
    return "; ".join(parts)


# -- greedy -------------------------------------------------------------------------------------


def greedy(problem: Problem) -> Plan:
    """Paper A's order (descending demand); if that strands a tenant, retry in descending order
    of the tenant's own minimal share (first-fit-decreasing style) and keep the better plan."""
    profiles, missing = _profiles(problem)
    by_demand = sorted(problem.tenants, key=lambda t: (-t.demand_rps, t.name))
    plan = _greedy_pass(problem, profiles, missing, by_demand)
    if plan.feasible:
        return plan

    def own_share(t: TenantSpec) -> int:
        return min((profiles[(t.name, g.name)].shares[0] for g in problem.gpus
                    if (t.name, g.name) in profiles), default=INFEASIBLE)

    by_size = sorted(problem.tenants, key=lambda t: (-own_share(t), t.name))
    other = _greedy_pass(problem, profiles, missing, by_size)
    placed = sum(a.feasible for a in plan.assignments.values())
    placed_other = sum(a.feasible for a in other.assignments.values())
    if (placed_other, -other.total_share_pct) > (placed, -plan.total_share_pct):
        return other
    return plan


def _greedy_pass(
    problem: Problem, profiles: Mapping[tuple[str, str], Profile], missing: Sequence[str],
    order: Sequence[TenantSpec],
) -> Plan:
    params = problem.params
    reasons: dict[str, str] = {m.split(":", 1)[0]: m.split(": ", 1)[1] for m in missing}
    members: list[list[str]] = [[] for _ in problem.gpus]
    units = [0] * len(problem.gpus)
    total = [0] * len(problem.gpus)
    mem_used = [0] * len(problem.gpus)
    placed: dict[str, int] = {}
    for t in order:
        if t.name in reasons:
            continue
        alone = [profiles[(t.name, g.name)] for g in problem.gpus]
        if all(p.reason for p in alone):
            reasons[t.name] = alone[0].reason
            continue
        nonempty = sorted((units[g], g) for g in range(len(problem.gpus)) if members[g])
        cands = [g for _, g in nonempty[: params.candidates]]
        seen_empty: set[str] = set()
        for g, spec in enumerate(problem.gpus):
            if not members[g] and spec.name not in seen_empty:
                seen_empty.add(spec.name)
                cands.append(g)
        best: tuple[int, int, int] | None = None
        best_shares: dict[str, int] = {}
        for g in cands:
            gname = problem.gpus[g].name
            prof = profiles[(t.name, gname)]
            if prof.reason or mem_used[g] + prof.memory_bytes > problem.gpus[g].memory_bytes:
                continue
            new_units = units[g] + prof.activity_units
            shares = {t.name: _share_at(prof, units[g], params)}
            for m in members[g]:
                pm = profiles[(m, gname)]
                shares[m] = _share_at(pm, new_units - pm.activity_units, params)
            new_total = sum(shares.values())
            if new_total > 100 or max(shares.values()) > 100:
                continue
            key = (new_total - total[g], new_units, g)
            if best is None or key < best:
                best, best_shares = key, shares
        if best is None:
            reasons[t.name] = ("no GPU has room for it (share capacity, memory or co-runner "
                               "interference)")
            continue
        g = best[2]
        members[g].append(t.name)
        units[g] += profiles[(t.name, problem.gpus[g].name)].activity_units
        mem_used[g] += profiles[(t.name, problem.gpus[g].name)].memory_bytes
        total[g] = sum(best_shares.values())
        placed[t.name] = g
    return _finish(problem, "greedy", placed, profiles, reasons)


# -- static baseline ----------------------------------------------------------------------------


def static(problem: Problem) -> Plan:
    """The operator's fixed shares, placed first-fit decreasing (share and memory capacity);
    the SLO check then uses the same predictors and co-runner levels as the planners."""
    profiles, missing = _profiles(problem)
    reasons = {m.split(":", 1)[0]: m.split(": ", 1)[1] for m in missing}
    free = [100] * len(problem.gpus)
    mem_free = [g.memory_bytes for g in problem.gpus]
    placed: dict[str, int] = {}
    shares: dict[str, int] = {}
    # first-fit decreasing by static share, the packing an operator would do by hand
    for t in sorted(problem.tenants, key=lambda t: -(t.static_share_pct or 0)):
        if t.name in reasons:
            continue
        if t.static_share_pct is None:
            reasons[t.name] = "no static_share_pct configured"
            continue
        for g, spec in enumerate(problem.gpus):
            prof = profiles[(t.name, spec.name)]
            if free[g] >= t.static_share_pct and mem_free[g] >= prof.memory_bytes:
                free[g] -= t.static_share_pct
                mem_free[g] -= prof.memory_bytes
                placed[t.name] = g
                shares[t.name] = t.static_share_pct
                break
        else:
            reasons[t.name] = f"static share {t.static_share_pct} % does not fit on any GPU"
    return _finish(problem, "static", placed, profiles, reasons, shares=shares)


# -- exact oracle -------------------------------------------------------------------------------


def oracle(problem: Problem) -> Plan:
    params = problem.params
    profiles, missing = _profiles(problem)
    reasons = {m.split(":", 1)[0]: m.split(": ", 1)[1] for m in missing}
    tenants = []
    for t in problem.tenants:
        if t.name in reasons:
            continue
        if all(profiles[(t.name, g.name)].reason for g in problem.gpus):
            reasons[t.name] = profiles[(t.name, problem.gpus[0].name)].reason
            continue
        tenants.append(t)
    identical = len({g for g in problem.gpus}) == 1
    step_units = round(params.grid_step * UNITS)
    # variables: x[i,g,k] for kept levels, then nothing else (y is a sum of x)
    cols: list[tuple[int, int, int, int]] = []  # (tenant idx, gpu, level, share)
    for i, t in enumerate(tenants):
        for g, spec in enumerate(problem.gpus):
            if identical and g > i:
                continue
            prof = profiles[(t.name, spec.name)]
            if prof.reason:
                continue
            s = prof.shares
            for k in range(len(s)):
                if s[k] > 100:
                    break
                if k + 1 == len(s) or s[k + 1] != s[k]:
                    cols.append((i, g, k, s[k]))
    if not tenants:
        return _finish(problem, "oracle", {}, profiles, reasons)
    n = len(cols)
    c = np.array([float(col[3]) for col in cols])
    rows: list[int] = []
    cidx: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    r = 0

    def add(entries: list[tuple[int, float]], low: float, high: float) -> None:
        nonlocal r
        for j, v in entries:
            rows.append(r)
            cidx.append(j)
            vals.append(v)
        lo.append(low)
        hi.append(high)
        r += 1

    by_tenant: dict[int, list[int]] = {}
    by_gpu: dict[int, list[int]] = {}
    by_tg: dict[tuple[int, int], list[int]] = {}
    for j, (i, g, _, _) in enumerate(cols):
        by_tenant.setdefault(i, []).append(j)
        by_gpu.setdefault(g, []).append(j)
        by_tg.setdefault((i, g), []).append(j)
    for i in range(len(tenants)):
        add([(j, 1.0) for j in by_tenant.get(i, [])], 1.0, 1.0)
    for g, spec in enumerate(problem.gpus):
        js = by_gpu.get(g, [])
        if not js:
            continue
        add([(j, float(cols[j][3])) for j in js], -np.inf, 100.0)
        add([(j, float(profiles[(tenants[cols[j][0]].name, spec.name)].memory_bytes) / 2**20)
             for j in js], -np.inf, spec.memory_bytes / 2**20)
        big_m = float(sum(profiles[(t.name, spec.name)].activity_units for t in tenants))
        for i in range(len(tenants)):
            own = by_tg.get((i, g))
            if not own:
                continue
            # Σ_{j≠i} a_j y[j,g] - Σ_k L_k x[i,g,k] + M y[i,g] ≤ M
            entries: list[tuple[int, float]] = []
            for j in js:
                ti = cols[j][0]
                if ti != i:
                    a_j = profiles[(tenants[ti].name, spec.name)].activity_units
                    entries.append((j, float(a_j)))
            for j in own:
                entries.append((j, -float(cols[j][2] * step_units) + big_m))
            add(entries, -np.inf, big_m)
    a = coo_array((vals, (rows, cidx)), shape=(r, n)).tocsr()
    res = milp(
        c,
        constraints=LinearConstraint(a, np.array(lo), np.array(hi)),
        integrality=np.ones(n),
        bounds=Bounds(np.zeros(n), np.ones(n)),
        options={"time_limit": params.oracle_time_limit_s, "disp": False},
    )
    if res.x is None:
        for t in tenants:
            reasons[t.name] = f"oracle: no feasible joint placement ({res.message})"
        return _finish(problem, "oracle", {}, profiles, reasons, optimal=False, detail=res.message)
    placed = {tenants[cols[j][0]].name: cols[j][1] for j in range(n) if res.x[j] > 0.5}
    optimal = bool(res.status == 0)
    return _finish(problem, "oracle", placed, profiles, reasons, optimal=optimal,
                   detail=str(res.message))
