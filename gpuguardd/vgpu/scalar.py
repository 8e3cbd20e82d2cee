"""The allocator's per-tenant model, one (share, co-runner level) at a time, in pure Python.

The daemon's re-planner needs, per tenant and tick, only the share a tenant requires at one
co-runner level and the operating point at its current share. It evaluates them here, without
numpy or scipy, so that a daemon with ``[vgpu]`` enabled stays as small as one without it
(``tests/test_footprint.py``). The offline planners (:mod:`gpuguardd.vgpu.allocator`: greedy,
MILP oracle, ``gpuguardd allocate``) evaluate the same model vectorised with numpy over every
tenant, share and level at once.

The model is documented in :mod:`gpuguardd.vgpu.allocator`; the functions here follow
``allocator._evaluate`` and ``allocator.build_profiles`` line by line (same formulas, same
order of operations, the same coarse-then-fine share search and the same carry of the maximum
along the co-runner levels). ``tests/vgpu/test_scalar.py`` checks that both give the same
feasibility, batch and shares, and latencies within 1e-6 relative, over a grid of tenants,
shares and levels. Two differences in method, not in value: the Erlang-B term uses the
recursion B_k = a·B_{k-1} / (k + a·B_{k-1}) instead of Poisson pmf / cdf, and only the levels
a query needs are searched.

The plain data types the daemon and the planners share (:class:`TenantSpec`,
:class:`AllocParams`, :class:`Problem`) and the activity footprint live here too; the allocator
re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

from gpuguardd.model.llm import LlmArch
from gpuguardd.vgpu import memory
from gpuguardd.vgpu.gpus import GpuSpec
from gpuguardd.vgpu.predictor import Predictor

UNITS = 10_000  # activity footprints in integer units of 1e-4
PREFILL_EFFICIENCY = 0.7  # sustained fraction of dense peak in prefill (A100 calibration)
INFEASIBLE = 101
COARSE_PCT = 5  # the share search's first stride (see allocator.build_profiles)
NEWTON_STEPS = 24
INF = math.inf
Z99 = 2.326
PDF99 = math.exp(-Z99 * Z99 / 2.0) / math.sqrt(2.0 * math.pi)


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
    prompt_tokens_p99: int | None = None  # None: every prompt is ``prompt_tokens`` long


@dataclass(frozen=True, slots=True)
class AllocParams:
    rho_max: float = 0.85
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    grid_step: float = 0.05
    grid_max: float = 1.0  # co-runners busier than one whole GPU leave no time to slice
    candidates: int = 16
    oracle_time_limit_s: float = 25.0
    # span over which an engine's own prefills slow its decode steps (the simulator's engine:
    # a 1 s moving average of its prefill-busy fraction, read when a request joins the batch)
    interference_window_s: float = 1.0
    # the span over which a tenant's p99 is measured against its SLO, and the probability
    # that one such span's p99 meets it (the allocator's module docstring: "One window's p99")
    slo_window_s: float = 3600.0
    slo_confidence: float = 0.99


@dataclass(frozen=True, slots=True)
class Problem:
    tenants: tuple[TenantSpec, ...]
    gpus: tuple[GpuSpec, ...]
    predictors: Mapping[tuple[str, str], Predictor]
    params: AllocParams = field(default_factory=AllocParams)


@dataclass(frozen=True, slots=True)
class Point:
    """Predicted operating point of a tenant at a share and co-runner level."""

    feasible: bool
    batch: int
    ttft_p99_ms: float
    tpot_p99_ms: float
    capacity_rps: float


def n_levels(params: AllocParams) -> int:
    return round(params.grid_max / params.grid_step) + 1


def level_of(units: int, params: AllocParams) -> int:
    """The grid level of a co-runner activity in integer ``UNITS``, rounded up."""
    step = round(params.grid_step * UNITS)
    return -(-units // step)  # ceil


def footprint(t: TenantSpec, gpu: GpuSpec, batch: int) -> float:
    """Co-runner activity this tenant exerts, from the roofline of its own demand:

        u = λ · prefill_flops(P) / (peak · 0.7)                     prefill SM time
          + λ · (O - 1) / n · decode_bytes(P + O/2, n) / hbm         decode steps streaming HBM
        n = min(batch, max(1, λ · R))  sequences per decode step

    The decode term is also its DRAM activity, so DRAM activity ≤ SM activity (see the
    allocator's module doc).
    """
    lam = t.demand_rps
    n = max(1.0, float(batch))
    prefill = lam * t.arch.prefill_flops(t.prompt_tokens) / (gpu.peak_flops * PREFILL_EFFICIENCY)
    ctx = t.prompt_tokens + t.output_tokens // 2
    steps = lam * max(t.output_tokens - 1, 0) / n
    decode = steps * t.arch.decode_bytes(ctx, max(1, round(n))) / gpu.hbm_bps
    return min(1.0, prefill + decode)


# -- queueing helpers ---------------------------------------------------------------------------


def _log(x: float) -> float:
    return math.log(x) if x > 0 else (-INF if x == 0 else math.nan)


def _div(a: float, b: float) -> float:
    """a / b with IEEE semantics (numpy's under ``errstate(divide="ignore")``)."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(INF, a) * math.copysign(1.0, b)


def erlang_c(servers: int, load: float) -> float:
    """Probability of waiting in M/M/c (c = ``servers``, offered load in Erlangs); 1 once the
    load reaches c."""
    c = float(servers)
    rho = load / c
    if not rho < 1.0:
        return 1.0
    a = max(load, 1e-300)
    b = 1.0
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    erl = b / (1.0 - rho * (1.0 - b))
    if math.isnan(erl):
        return 1.0
    return min(max(erl, 0.0), 1.0)


def decay_rate(lam: float, mean: float, sd: float) -> float:
    """``allocator._decay_rate`` for one point: the Cramér-Lundberg decay rate θ of the M/G/1
    waiting-time tail for normal(mean, sd) service (same bracket, same safeguarded Newton)."""
    phi = lam * mean
    if not 0 < phi < 1.0:
        return INF if phi <= 0 else 0.0
    p = phi
    m = mean if mean > 0 else 1.0
    lo = 0.0
    hi = min(2.0 * (1.0 - p) / p, 2.0 * math.log(1.0 / p) + 2.0) / m
    theta = hi
    for _ in range(NEWTON_STEPS):
        a = min(theta * m + theta * theta * sd * sd / 2.0, 700.0)
        em1 = math.expm1(a)
        h = _log(lam * em1) - _log(theta)
        dh = _div((m + theta * sd * sd) * (em1 + 1.0), em1) - _div(1.0, theta)
        if h > 0:
            hi = theta
        else:
            lo = theta
        nxt = theta - _div(h, dh)
        theta = nxt if (math.isfinite(nxt) and lo < nxt < hi) else (lo + hi) / 2.0
    return theta


# -- one window's p99 ----------------------------------------------------------------------------


def window_sd(demand_rps: float, params: AllocParams) -> float:
    """Standard deviation, in units of the latency's own log-normal spread, of the empirical
    p99 of one ``slo_window_s`` window: N = demand · window requests whose tail comes in clusters
    of k = 1 + demand · ``interference_window_s`` (requests admitted in one burst share it), so
    sd = sqrt(0.01 · 0.99 · k / N) / pdf(z99) (the sample quantile's standard error)."""
    n_window = max(demand_rps * params.slo_window_s, 1.0)
    cluster = 1.0 + demand_rps * params.interference_window_s
    return math.sqrt(0.01 * 0.99 * cluster / n_window) / PDF99


def margin(p99: float, mean: float, sample_sd: float, tail: float, z_conf: float) -> float:
    """The factor from a latency's stationary p99 to the level one window's p99 stays under
    with probability ``slo_confidence`` (z_conf): the window's sampling error (log spread
    ln(p99 / mean) / z99 times ``sample_sd``) and the predictor's error (ln tail / z99) are
    independent, so they add in quadrature."""
    ratio = _log(_div(p99, mean))
    spread = 0.0 if math.isnan(ratio) else max(ratio, 0.0) / Z99
    return math.exp(z_conf * math.hypot(spread * sample_sd, _log(tail) / Z99))


# -- one operating point ------------------------------------------------------------------------


def _evaluate(t: TenantSpec, pred: Predictor, params: AllocParams, share: float,
              level: float, *, full: bool = True) -> Point:
    """``allocator._evaluate`` at one share (fraction) and co-runner level. With ``full``
    False it returns as soon as the answer's feasibility is known (the share search)."""
    bmin = min(params.batches)
    cap_b = max(float(t.max_batch), float(bmin))
    batches = [b for b in params.batches if b <= cap_b]
    lam = t.demand_rps / 1000.0
    prompt = float(t.prompt_tokens)
    prompt99 = float(max(t.prompt_tokens, t.prompt_tokens_p99 or 0))
    out = float(t.output_tokens)
    in_bytes = float(t.input_bytes_per_request)
    ttft_slo = INF if t.ttft_slo_ms is None else t.ttft_slo_ms
    tpot_slo = INF if t.tpot_slo_ms is None else t.tpot_slo_ms
    z_conf = NormalDist().inv_cdf(params.slo_confidence)
    sample_sd = window_sd(t.demand_rps, params)
    o1 = max(out - 1.0, 0.0)
    ttft1 = float(pred.ttft_ms(1, share, level, prompt, in_bytes))
    phi = lam * ttft1
    ttft99_prompt = float(pred.ttft_ms(1, share, level, prompt99, in_bytes))
    sd = max(ttft99_prompt - ttft1, 0.0) / Z99
    theta = decay_rate(lam, ttft1, sd)
    if phi > 0.005:
        tail_t = ttft1 + _div(_log(max(phi, 1e-300) * 200.0) + theta * theta * sd * sd / 2.0,
                              theta)
    else:
        tail_t = 0.0
    prefill99 = max(ttft1 + 2.576 * sd, tail_t)
    cs = _div(sd, ttft1)
    wait_mean = _div(phi * (1.0 + cs * cs) / 2.0 * ttft1, 1.0 - phi) if phi < 1.0 else INF
    phi99 = phi + 2.326 * ttft1 * math.sqrt(lam / (params.interference_window_s * 1000.0))
    stretch = max(_div(1.0, 1.0 - phi), 1.0 + phi99) if phi < 1.0 else INF
    cap_ttft = _div(1.0, max(ttft1, 1e-12)) if ttft1 > 0 else INF

    def tpot_ms(b: float) -> float:
        return float(pred.tpot_ms(b, share, level, prompt, out))

    rows: list[tuple[bool, float, float, float, float, float, float]] = []
    for b in batches:
        bf = float(b)
        tpot_full = tpot_ms(bf)
        tpot_eff = _div(tpot_full, 1.0 - phi) if phi < 1.0 else INF
        resid = ttft1 + o1 * tpot_eff
        slots_rate = _div(bf, resid)
        n = min(bf, lam * resid)
        for _ in range(2):
            step = tpot_ms(math.ceil(max(n, 1.0)))
            n = min(bf, lam * (ttft1 + o1 * step / max(1.0 - phi, 1e-9)))
        n99 = min(max(math.ceil(n + 2.326 * math.sqrt(n)), 1.0), bf)
        tpot = tpot_ms(math.ceil(max(n, 1.0)))
        burst = tpot_ms(n99) * stretch
        tpot99 = burst * margin(burst, tpot * (1.0 + phi), sample_sd, pred.tpot_tail, z_conf)
        m_ttft = margin(prefill99 + tpot, ttft1 + wait_mean + tpot, sample_sd, pred.ttft_tail,
                        z_conf)
        ttft99 = (prefill99 + tpot) * m_ttft
        cap = min(slots_rate, cap_ttft)
        ok = (lam <= params.rho_max * slots_rate and phi <= params.rho_max
              and ttft99 <= ttft_slo and tpot99 <= tpot_slo)
        rows.append((ok, resid, slots_rate, ttft99, tpot99, cap, m_ttft))
    # the queueing wait in descending batch order; the largest feasible batch wins
    chosen = len(batches) - 1
    feasible = False
    for i in reversed(range(len(batches))):
        ok, resid, rate, ttft99, tpot99, cap, m_ttft = rows[i]
        if not ok:
            continue
        pw = erlang_c(batches[i], lam * resid)
        w99 = _div(_log(max(pw, 1e-300) * 100.0), rate - lam) if pw > 0.01 else 0.0
        ttft99 = ttft99 + w99 * m_ttft
        rows[i] = (ok, resid, rate, ttft99, tpot99, cap, m_ttft)
        if ttft99 <= ttft_slo:
            chosen, feasible = i, True
            break
    if not full:
        return Point(feasible, batches[chosen], 0.0, 0.0, 0.0)
    _, _, _, ttft99, tpot99, cap, _ = rows[chosen]
    return Point(feasible, batches[chosen], ttft99, tpot99, cap * 1000.0)


def point(t: TenantSpec, pred: Predictor, params: AllocParams, share_pct: int,
          activity: float) -> Point:
    """The predicted operating point at one share and co-runner activity (on the grid):
    ``allocator.point`` without numpy."""
    return _evaluate(t, pred, params, share_pct / 100.0, activity)


def _feasible(t: TenantSpec, pred: Predictor, params: AllocParams, share_pct: int,
              level: float) -> bool:
    return _evaluate(t, pred, params, share_pct / 100.0, level, full=False).feasible


def memory_bytes(t: TenantSpec) -> int:
    return memory.estimate(t.arch, prompt_tokens=t.prompt_tokens, output_tokens=t.output_tokens,
                           max_batch=t.max_batch).total_bytes


def min_share_pct(t: TenantSpec, gpu: GpuSpec) -> int:
    """The memory-feasible minimum share (at most 100)."""
    return min(memory.min_share_pct(memory_bytes(t), gpu.memory_bytes), 100)


def _first_share(t: TenantSpec, pred: Predictor, params: AllocParams, mem_min: int,
                 level: float) -> int:
    """The first feasible share at one level, searched like ``allocator.build_profiles``:
    5 % strides from the memory-feasible minimum, then the last stride in 1 % steps."""
    top = None
    for c in range(COARSE_PCT, 101, COARSE_PCT):
        if c >= mem_min and _feasible(t, pred, params, c, level):
            top = c
            break
    if top is None:
        return INFEASIBLE
    lo = max(min(mem_min, 100), top - COARSE_PCT + 1)
    for i in range(COARSE_PCT):
        s = min(lo + i, 100)
        if _feasible(t, pred, params, s, level):
            return s
    return INFEASIBLE


def required_share(t: TenantSpec, gpu: GpuSpec, pred: Predictor, params: AllocParams,
                   level: int) -> int:
    """``allocator.build_profile(t, gpu, pred, params).shares[level]`` without numpy: the
    largest first-feasible share over the levels up to ``level`` (more interference never
    needs less share); INFEASIBLE beyond the grid or when no share up to 100 % is feasible.
    Only the levels up to ``level`` are searched (the daemon asks for one level)."""
    if level >= n_levels(params):
        return INFEASIBLE
    mem = memory.min_share_pct(memory_bytes(t), gpu.memory_bytes)
    best = 0
    for k in range(level, -1, -1):
        best = max(best, _first_share(t, pred, params, mem, k * params.grid_step))
        if best >= INFEASIBLE:
            break
    return best
