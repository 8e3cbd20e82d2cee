"""Minimal vGPU shares for LLM tenants: greedy (paper A), exact MILP oracle, static baseline.

The model both planners optimise (one model, so that the oracle's optimum bounds the greedy):

Service. A tenant runs a continuous-batching engine with ``b`` sequence slots, b from
``batches`` (≤ its ``max_batch``). At share f and co-runner activity A (λ = ``demand_rps``):

    a new request is prefilled on its own:   TTFT1 = TTFT(b=1, f, A, P)
    prefills steal decode time:              φ = λ · TTFT1,  TPOT_eff = TPOT(b, f, A) / (1 - φ)
    one request holds a slot for             R = TTFT1 + (O - 1) · TPOT_eff   (all b slots busy)
    sequences per decode step                n = min(b, λ·R(n)) (Little, iterated from R above),
                                             n99 = n + 2.326·√n (Poisson p99)
    capacity                                 λ · R ≤ rho_max · b  and  φ ≤ rho_max  (0.85)
    a request's own prefill S and its wait   S ~ normal(TTFT1, sd),
    W in the prefill queue (M/G/1):          sd = (TTFT(1, f, A, P99) - TTFT1) / 2.326
                                             W = 0 w.p. 1 - φ, else exponential, mean
                                             m = (1 + cs²)/2 · TTFT1 / (1 - φ)   (Kingman / φ)
                                             cs = (P99/P - 1) / 2.326  (prompt-length spread)
                                             Tp99 = max(TTFT1 + 2.576 sd,
                                                        TTFT1 + m·ln(200 φ) + sd²/(2m))
                                             (0.5 % of the tail to each: P(S+W > Tp99) ≤ 1 %)
    slots are an M/M/b queue:                Ws99 = ln(100 · C) / (b/R - λ) if C > 1 %, else 0
                                             C = Erlang-C probability that all b slots are busy
    TTFT p99 = (Tp99 + TPOT(n) + Ws99) · M(Tp99 + TPOT(n), TTFT1 + E[W] + TPOT(n), ttft_tail)
               (+ one running decode step; E[W] = φ · (1 + cs²)/2 · TTFT1 / (1 - φ))  ≤ τ_ttft
    prefill-busy fraction over the last W     φ99 = φ + 2.326 · TTFT1 · √(λ / W)   (Poisson p99,
                                             W = ``interference_window_s``)
    burst = TPOT(n99) · max(1 / (1 - φ), 1 + φ99)
    TPOT p99 = burst · M(burst, TPOT(n) · (1 + φ), tpot_tail)                      ≤ τ_tpot

P99 is the tenant's ``prompt_tokens_p99`` (default: P, no spread). Adding the slot wait and the
running step to Tp99 over-estimates the p99 of the sum: the model errs on the safe side.

One window's p99. The terms above are stationary p99s: over a long run, 1 % of requests exceed
them. An SLO is checked on one window's requests (``slo_window_s``, default one hour; set from
``[vgpu]`` or the ``allocate`` input; the bench's runs are one such window), and that window's
p99 is a sample of it. The margin M(p99, mean, tail)
raises a stationary p99 to the level the window's p99 stays under with probability
``slo_confidence`` (0.99), from two independent errors, added in quadrature (a quantile of
their sum, not a sum of their quantiles):

    sampling   the window's N = λ · slo_window_s requests have their tail in clusters of
               k = 1 + λ · W (requests admitted in one burst share its stretch, above), so its
               p99 has the sample quantile's standard error; in log terms
               s_w = s · √(0.01 · 0.99 · k / N) / pdf(2.326),  s = ln(p99 / mean) / 2.326
               (the latency's spread, taken log-normal: TPOT's mean is TPOT(n) · (1 + φ))
    predictor  s_p = ln(tail) / 2.326, the predictor's p99 error on its training rows (the
               same in every request of a window: it does not average out)
    M = exp(z · √(s_w² + s_p²)),  z = Φ⁻¹(``slo_confidence``)

Before, the predictor's tail multiplied the burst's p99 (both at their p99 at once) and no
window was allowed for. In the simulator the burst term is close to the long-run p99 (Qwen3-4B
at 26 %: 54.7 ms vs 54.8 pooled over 200 runs; Qwen3-8B at 36 %: 74.8 vs 73.5 over 30), so the old
product was a fixed 7 % margin; one window's p99 has a 2-4 % standard deviation, and its
worst of 100 runs is 7-16 % above the median run (each tenant alone, 600-s runs).
Composing the two burst factors (n99, φ99) as correlated log-normals instead of taking both at
their p99 was tried and not kept: with the request's own sequence counted (n + 1) and the
windows' overlap as their correlation, it gives 53.0-53.9 ms for the 4B, under the 54.8
measured (the time-average n under-states what an admitted request sees, which the comonotone
product happens to offset).

R uses the step time of b sequences (an over-estimate when fewer are in flight); the TPOT
check uses the Poisson p99 of the sequences in flight, n99. A share is feasible if some b
meets all of it.

Slots. The tenant runs at the LARGEST such b (the engine's ``max_num_seqs``). A smaller cap
saves no share (the memory estimate reserves KV for ``max_batch`` sequences anyway) and only
turns bursts into an admission queue, whose tail the M/M/b term above under-states: the
sequences in flight are over-dispersed, because the prefill burst that admits them also
stretches their residence (TPOT x (1 + rho) for all their tokens). In the simulator, Qwen3-8B at
38 % with 16 slots missed its TTFT SLO in 4 of 100 600-s runs (p99 up to 1.79 x the SLO), with
32 slots in none (max 0.84 x). A cap below n99 still lowers the TPOT p99 (n is capped at b):
a tenant whose TPOT is met only that way gets that cap, at the TTFT the slot wait costs.

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

Greedy: tenants in descending demand order; each goes to the GPU that minimises the increase of
that GPU's total share, counting the share increase of the tenants already there caused by the
newcomer. Candidates: the ``candidates`` (16) least active non-empty GPUs with room for the
tenant's own share and memory, and one empty GPU per GPU model.

Oracle (``scipy.optimize.milp``, HiGHS): binaries x[i,g,k] = tenant i on GPU g with co-runner
activity ≤ level k and share S_i(k); only levels where S_i steps up are kept (the highest level
per distinct share — any lower level with the same share is dominated). y[i,g] = Σ_k x[i,g,k].

    min  Σ S_i(k)·x[i,g,k]
    s.t. Σ_g y[i,g] = 1                          every tenant placed once
         Σ_i,k S_i(k)·x[i,g,k] ≤ 100             share capacity per GPU
         Σ_i mem_i·y[i,g] ≤ mem_g                 memory per GPU
         Σ_{j≠i} a_j·y[j,g] ≤ Σ_k L_k·x[i,g,k] + M·(1 - y[i,g])   co-runner level chosen ≥ actual
         identical GPUs: tenant i only on GPU ≤ i (relabelling symmetry removed)

HiGHS runs with a time limit (``oracle_time_limit_s``); when it stops early the plan says
``optimal = False`` and carries the proven lower bound, which still bounds the greedy's gap.

With S_i non-decreasing in k the optimiser picks the lowest admissible level, i.e. the same
rounded-up level the greedy uses, so the oracle is exact for this model (integer footprints keep
the level test free of floating-point slack).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln, pdtr

from gpuguardd.vgpu import memory
from gpuguardd.vgpu.gpus import GpuSpec
from gpuguardd.vgpu.predictor import Predictor
from gpuguardd.vgpu.scalar import (
    INFEASIBLE,
    PREFILL_EFFICIENCY,
    UNITS,
    Z99,
    AllocParams,
    Point,
    Problem,
    TenantSpec,
    footprint,
    window_sd,
)

__all__ = ["INFEASIBLE", "PREFILL_EFFICIENCY", "UNITS", "AllocParams", "Assignment", "Plan",
           "Point", "Problem", "Profile", "TenantSpec", "build_profile", "build_profiles",
           "footprint", "greedy", "oracle", "point", "profiles_of", "static"]

FloatArray = npt.NDArray[np.float64]
@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the planners need about one tenant on one GPU model."""

    shares: tuple[int, ...]  # S(level) per grid level, INFEASIBLE when none ≤ 100 %
    activity_units: int
    memory_bytes: int
    min_share_pct: int
    reason: str  # why it is infeasible even alone on an idle GPU ("" if feasible)
    points: Grid  # the operating point at S(level), per level


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
    lower_bound_pct: float | None = None  # oracle: proven lower bound on the total share

    @property
    def total_share_pct(self) -> int:
        """Shares handed out (a placed tenant that misses its SLO still holds its share)."""
        return sum(a.share_pct or 0 for a in self.assignments.values())

    @property
    def feasible(self) -> bool:
        return all(a.feasible for a in self.assignments.values())


# -- the per-tenant model -----------------------------------------------------------------------


def _levels(params: AllocParams) -> FloatArray:
    n = round(params.grid_max / params.grid_step) + 1
    return np.arange(n, dtype=np.float64) * params.grid_step


def _erlang_c(servers: npt.NDArray[np.int64], load: FloatArray) -> FloatArray:
    """Probability of waiting in M/M/c, c = ``servers`` broadcast against ``load`` (Erlangs).

    Erlang B in closed form, B = Poisson_pmf(c; a) / Poisson_cdf(c; a) (one vectorised call
    instead of the c-step recursion), then C = B / (1 - rho·(1 - B)) with rho = a / c; C = 1
    once rho >= 1."""
    c = servers.astype(np.float64)
    rho = load / c
    busy = rho < 1.0
    a = np.where(busy, np.maximum(load, 1e-300), 0.5)  # placeholders where C = 1 anyway
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        b = np.exp(c * np.log(a) - a - gammaln(c + 1.0)) / pdtr(c, a)
        erl = b / (1.0 - np.where(busy, rho, 0.0) * (1.0 - b))
    return np.where(busy, np.clip(np.nan_to_num(erl, nan=1.0), 0.0, 1.0), 1.0)


@dataclass(frozen=True, slots=True)
class Grid:
    """Predicted operating points, arrays of shape ``np.broadcast(share, level).shape``."""

    ok: npt.NDArray[np.bool_]
    batch: npt.NDArray[np.int64]  # the batch (slot count) the tenant runs at
    ttft_p99_ms: FloatArray
    tpot_p99_ms: FloatArray
    capacity_rps: FloatArray


@dataclass(frozen=True, slots=True)
class _Load:
    """Tenant parameters as arrays along a tenant axis (shape (T, 1, 1)) or scalars."""

    lam: FloatArray  # demand, requests per ms
    prompt: FloatArray
    prompt99: FloatArray
    output: FloatArray
    input_bytes: FloatArray
    ttft_slo: FloatArray  # inf when the tenant has none
    tpot_slo: FloatArray
    max_batch: FloatArray
    sample_sd: FloatArray  # scalar.window_sd: one SLO window's p99, its sampling error

    @staticmethod
    def of(ts: Sequence[TenantSpec], ndim: int, params: AllocParams) -> _Load:
        shape = (len(ts),) + (1,) * (ndim - 1)

        def col(vals: list[float]) -> FloatArray:
            return np.array(vals, dtype=np.float64).reshape(shape)

        inf = float("inf")
        return _Load(
            lam=col([t.demand_rps / 1000.0 for t in ts]),
            prompt=col([t.prompt_tokens for t in ts]),
            prompt99=col([max(t.prompt_tokens, t.prompt_tokens_p99 or 0) for t in ts]),
            output=col([t.output_tokens for t in ts]),
            input_bytes=col([t.input_bytes_per_request for t in ts]),
            ttft_slo=col([inf if t.ttft_slo_ms is None else t.ttft_slo_ms for t in ts]),
            tpot_slo=col([inf if t.tpot_slo_ms is None else t.tpot_slo_ms for t in ts]),
            max_batch=col([t.max_batch for t in ts]),
            sample_sd=col([window_sd(t.demand_rps, params) for t in ts]),
        )


def _decay_rate(lam: FloatArray, mean: FloatArray, sd: FloatArray) -> FloatArray:
    """Decay rate θ of the M/G/1 waiting-time tail, P(W > t) ≈ φ·e^(-θt) (Cramér-Lundberg):
    the positive root of λ·(E[e^(θS)] - 1) = θ for service S ~ normal(mean, sd), φ = λ·mean.

    In x = θ·mean the root lies in (0, x_up], x_up = min(2(1 - φ)/φ, 2·ln(1/φ) + 2): the first
    bound solves the equation with e^x ≥ 1 + x + x²/2 and sd = 0, at the second φ·(e^x - 1) > x
    already. Safeguarded Newton on h(θ) = ln(λ·(E[e^(θS)] - 1)) - ln(θ) (nearly linear in θ
    far from 0), bisecting whenever a step leaves the bracket. inf where φ = 0, 0 where φ ≥ 1
    (no stable queue)."""
    phi = lam * mean
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        stable = (phi > 0) & (phi < 1.0)
        p = np.where(stable, phi, 0.5)
        m = np.where(mean > 0, mean, 1.0)
        lo = np.zeros(np.broadcast(p, m, sd).shape)
        hi = np.minimum(2.0 * (1.0 - p) / p, 2.0 * np.log(1.0 / p) + 2.0) / m
        theta = hi.copy()
        for _ in range(_NEWTON_STEPS):
            a = np.minimum(theta * m + theta * theta * sd * sd / 2.0, 700.0)
            em1 = np.expm1(a)
            h = np.log(lam * em1) - np.log(theta)
            dh = (m + theta * sd * sd) * (em1 + 1.0) / em1 - 1.0 / theta
            above = h > 0
            hi = np.where(above, theta, hi)
            lo = np.where(above, lo, theta)
            nxt = theta - h / dh
            ok = np.isfinite(nxt) & (nxt > lo) & (nxt < hi)
            theta = np.where(ok, nxt, (lo + hi) / 2.0)
    return np.asarray(np.where(stable, theta, np.where(phi <= 0, np.inf, 0.0)),
                      dtype=np.float64)


_NEWTON_STEPS = 24


def _margin(p99: FloatArray, mean: FloatArray, sample_sd: FloatArray, tail: float,
            z_conf: float) -> FloatArray:
    """``scalar.margin`` over arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.maximum(np.log(p99 / mean), 0.0) / Z99
    spread = np.where(np.isnan(spread), 0.0, spread)
    return np.asarray(np.exp(z_conf * np.hypot(spread * sample_sd, math.log(tail) / Z99)),
                      dtype=np.float64)


def _evaluate(
    load: _Load, pred: Predictor, params: AllocParams, share: FloatArray, level: FloatArray
) -> Grid:
    """Vectorised over the broadcast of the tenant axis of ``load``, ``share`` (fraction) and
    ``level`` (co-runner activity), and over all batch sizes at once (a leading axis). Each
    point takes the smallest feasible batch, or the largest allowed one where none is."""
    shape = np.broadcast(share, level, load.lam).shape
    batches = np.array(params.batches, dtype=np.int64)
    # batch sizes no tenant here may use are dropped (the mask below handles the rest)
    batches = batches[batches <= max(float(np.max(load.max_batch)), float(batches.min()))]
    bx = batches.reshape((-1,) + (1,) * len(shape))
    allowed = (bx <= np.maximum(load.max_batch, batches.min())) & np.ones(shape, dtype=bool)
    lam = load.lam
    o1 = np.maximum(load.output - 1.0, 0.0)
    ttft1 = pred.ttft_ms(1, share, level, load.prompt, load.input_bytes)
    phi = lam * ttft1  # fraction of time spent in prefills
    # Prefill queue (M/G/1): a request waits with probability φ; given that it waits, the wait
    # is taken exponential with mean m = Kingman's mean wait / φ. Its own prefill S is taken
    # normal (mean TTFT1, sd implied by the p99 prompt's prefill). The p99 of S + W splits the
    # 1 % between the two tails: P(S > TTFT1 + 2.576 sd) = 0.5 % and
    # P(S + W > t) ≈ φ · exp(-(t - TTFT1)/m + sd²/(2 m²)) = 0.5 %.
    z_conf = NormalDist().inv_cdf(params.slo_confidence)
    ttft99_prompt = pred.ttft_ms(1, share, level, load.prompt99, load.input_bytes)
    sd = np.maximum(ttft99_prompt - ttft1, 0.0) / Z99
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta = _decay_rate(lam, ttft1, sd)
        tail_t = np.where(phi > 0.005,
                          ttft1 + (np.log(np.maximum(phi, 1e-300) * 200.0)
                                   + theta * theta * sd * sd / 2.0) / theta, 0.0)
    prefill99 = np.maximum(ttft1 + 2.576 * sd, tail_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = sd / ttft1
        wait_mean = np.where(phi < 1.0, phi * (1.0 + cs * cs) / 2.0 * ttft1 / (1.0 - phi), np.inf)
    bf = bx.astype(np.float64)
    tpot_full = pred.tpot_ms(bf, share, level, load.prompt, load.output)  # all b slots busy
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot_eff = np.where(phi < 1.0, tpot_full / (1.0 - phi), np.inf)
        resid = ttft1 + o1 * tpot_eff  # conservative: every step at b sequences
        slots_rate = bx / resid  # requests per ms the slots complete
        # Sequences actually in a step: Little's n = λ·R (≤ b), and for the p99 its Poisson
        # 99th percentile n + 2.326·√n. Two fixed-point steps n → R(n) → λ·R(n) from the
        # conservative R above; R grows with n, so every iterate stays above the fixed point.
        n = np.minimum(bf, lam * resid)
        for _ in range(2):
            step = pred.tpot_ms(np.ceil(np.maximum(n, 1.0)), share, level, load.prompt,
                                load.output)
            n = np.minimum(bf, lam * (ttft1 + o1 * step / np.maximum(1.0 - phi, 1e-9)))
        n99 = np.clip(np.ceil(n + 2.326 * np.sqrt(n)), 1.0, bf)
        tpot = pred.tpot_ms(np.ceil(np.maximum(n, 1.0)), share, level, load.prompt,
                            load.output)
        # The prefills a decode step waits behind are the last ``interference_window_s``'s,
        # not the mean: their count is Poisson(λW), so the busy fraction's p99 is
        # φ99 = φ + 2.326·TTFT1·√(λ/W); a burst stretches the step by (1 + φ99). It is the same
        # burst that puts n99 sequences in flight, so both p99s are taken together.
        phi99 = phi + 2.326 * ttft1 * np.sqrt(lam / (params.interference_window_s * 1000.0))
        stretch = np.where(phi < 1.0, np.maximum(1.0 / (1.0 - phi), 1.0 + phi99), np.inf)
        burst = pred.tpot_ms(n99, share, level, load.prompt, load.output) * stretch
        tpot99 = np.broadcast_to(
            burst * _margin(burst, tpot * (1.0 + phi), load.sample_sd, pred.tpot_tail, z_conf),
            allowed.shape)
        m_ttft = np.broadcast_to(
            _margin(prefill99 + tpot, ttft1 + wait_mean + tpot, load.sample_sd, pred.ttft_tail,
                    z_conf), allowed.shape)
    ttft99 = np.broadcast_to(prefill99 + tpot, allowed.shape) * m_ttft
    cap = np.broadcast_to(
        np.minimum(slots_rate, np.where(ttft1 > 0, 1.0 / np.maximum(ttft1, 1e-12), np.inf)),
        allowed.shape)
    ok = (allowed & (lam <= params.rho_max * slots_rate) & (phi <= params.rho_max)
          & (ttft99 <= load.ttft_slo) & (tpot99 <= load.tpot_slo))
    # The queueing wait (Erlang C: the expensive part) is added in descending batch order,
    # only at points where nothing else fails and no larger batch is already feasible: exactly
    # where it can change the answer. Elsewhere the reported TTFT p99 is the one before
    # queueing (such a batch is infeasible or not chosen anyway).
    settled = np.zeros(shape, dtype=bool)
    resid_b = np.broadcast_to(resid, ok.shape)
    rate_b = np.broadcast_to(slots_rate, ok.shape)
    for i in reversed(range(len(batches))):
        m = ok[i] & ~settled
        if m.any():
            r_m = resid_b[i][m]
            rate_m = rate_b[i][m]
            lam_m = np.broadcast_to(lam, shape)[m]
            pw = _erlang_c(np.full(r_m.shape, batches[i]), lam_m * r_m)
            with np.errstate(divide="ignore", invalid="ignore"):
                w99 = np.where(pw > 0.01,
                               np.log(np.maximum(pw, 1e-300) * 100.0) / (rate_m - lam_m), 0.0)
            row = ttft99[i]
            row[m] += w99 * m_ttft[i][m]
            good = np.zeros(shape, dtype=bool)
            good[m] = row[m] <= np.broadcast_to(load.ttft_slo, shape)[m]
            ok[i] = good
        else:
            ok[i] = False
        settled |= ok[i]
    any_ok = ok.any(axis=0)
    last = allowed.sum(axis=0) - 1
    # the largest feasible batch: see the module docstring ("Slots")
    top = len(batches) - 1 - ok[::-1].argmax(axis=0)
    idx = np.where(any_ok, top, last)[None, ...]
    return Grid(
        ok=any_ok,
        batch=batches[idx[0]],
        ttft_p99_ms=np.take_along_axis(ttft99, idx, axis=0)[0],
        tpot_p99_ms=np.take_along_axis(tpot99, idx, axis=0)[0],
        capacity_rps=np.take_along_axis(cap, idx, axis=0)[0] * 1000.0,
    )


def point(
    t: TenantSpec, pred: Predictor, params: AllocParams, share_pct: int, activity: float
) -> Point:
    """The predicted operating point at one share and co-runner activity (already on the grid)."""
    g = _evaluate(_Load.of([t], 1, params), pred, params, np.array([share_pct / 100.0]),
                  np.array([activity]))
    return Point(bool(g.ok[0]), int(g.batch[0]), float(g.ttft_p99_ms[0]),
                 float(g.tpot_p99_ms[0]), float(g.capacity_rps[0]))


COARSE_PCT = 5


def build_profile(t: TenantSpec, gpu: GpuSpec, pred: Predictor, params: AllocParams) -> Profile:
    return build_profiles([t], gpu, pred, params)[0]


def build_profiles(
    ts: Sequence[TenantSpec], gpu: GpuSpec, pred: Predictor, params: AllocParams
) -> list[Profile]:
    """S(level) for every co-runner level and every tenant (all sharing ``pred``): the first
    share, in Δ = 1 % steps from the memory-feasible minimum, that is feasible. Feasibility is
    monotone in the share (every predicted latency falls and the capacity grows with it), so
    the search first steps in 5 % and then walks the last 5 % bracket in 1 % steps: the same
    answer as stepping 1 % from the start, at a quarter of the work; tenants are evaluated
    together along a leading axis."""
    if not ts:
        return []
    mems = [memory.estimate(t.arch, prompt_tokens=t.prompt_tokens,
                            output_tokens=t.output_tokens, max_batch=t.max_batch).total_bytes
            for t in ts]
    mem_min = np.array([memory.min_share_pct(m, gpu.memory_bytes) for m in mems])[:, None, None]
    levels = _levels(params)[None, :, None]
    load = _Load.of(ts, 3, params)
    coarse = np.arange(COARSE_PCT, 101, COARSE_PCT, dtype=np.int64)[None, None, :]
    ok_c = _evaluate(load, pred, params, coarse / 100.0, levels).ok & (coarse >= mem_min)
    has: npt.NDArray[np.bool_] = np.asarray(ok_c.any(axis=2))  # (T, L)
    top = np.where(has, coarse[0, 0][ok_c.argmax(axis=2)], 100)
    lo = np.maximum(np.minimum(mem_min[:, :, 0], 100), top - COARSE_PCT + 1)
    fine = np.minimum(lo[:, :, None] + np.arange(COARSE_PCT)[None, None, :], 100)  # (T, L, 5)
    g = _evaluate(load, pred, params, fine / 100.0, levels)
    ok_f = g.ok & has[:, :, None]
    j = ok_f.argmax(axis=2)
    first = np.where(ok_f.any(axis=2), np.take_along_axis(fine, j[:, :, None], 2)[:, :, 0],
                     INFEASIBLE)
    # More interference never needs less share (the predictor is monotone; this only guards
    # the discreteness of the batch choice), so carry the maximum forward along the levels.
    mono = np.maximum.accumulate(first, axis=1)
    at = np.where(mono == first, j, 0)[:, :, None]

    def pick(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.take_along_axis(a, at, 2)[:, :, 0]

    ok_at = pick(ok_f) & (mono == first)
    batch_at, ttft_at, tpot_at, cap_at = (pick(g.batch), pick(g.ttft_p99_ms),
                                          pick(g.tpot_p99_ms), pick(g.capacity_rps))
    out: list[Profile] = []
    for i, t in enumerate(ts):
        points = Grid(ok=ok_at[i], batch=batch_at[i], ttft_p99_ms=ttft_at[i],
                      tpot_p99_ms=tpot_at[i], capacity_rps=cap_at[i])
        s0 = int(min(mono[i, 0], 100))
        b0 = int(points.batch[0]) if bool(points.ok[0]) else point(t, pred, params, s0, 0.0).batch
        # The footprint is taken at the tenant's own operating point alone on the GPU (share
        # S(0)): the concurrency there sets how well its decode steps amortise weight reads.
        f0 = s0 / 100.0
        ttft1 = float(np.asarray(pred.ttft_ms(1, f0, 0.0, t.prompt_tokens)))
        tpot = float(np.asarray(pred.tpot_ms(b0, f0, 0.0, t.prompt_tokens, t.output_tokens)))
        conc = t.demand_rps / 1000.0 * (ttft1 + max(t.output_tokens - 1, 0) * tpot)
        busy = footprint(t, gpu, min(b0, max(1, math.ceil(conc))))
        mm = int(mem_min[i, 0, 0])
        reason = ""
        if mm > 100:
            reason = (f"does not fit in memory: needs {mems[i] / 2**30:.1f} GiB, "
                      f"{gpu.name} has {gpu.memory_bytes / 2**30:.0f} GiB")
        elif mono[i, 0] >= INFEASIBLE:
            reason = _why(t, point(t, pred, params, 100, 0.0), params)
        out.append(Profile(
            shares=tuple(int(v) for v in mono[i]),
            activity_units=math.ceil(busy * UNITS),
            memory_bytes=mems[i],
            min_share_pct=min(mm, 100),
            reason=reason,
            points=points,
        ))
    return out


def _point_at(
    t: TenantSpec, pred: Predictor, params: AllocParams, prof: Profile, level: int, share: int
) -> Point:
    if share == prof.shares[level] and bool(prof.points.ok[level]):
        g = prof.points
        return Point(True, int(g.batch[level]), float(g.ttft_p99_ms[level]),
                     float(g.tpot_p99_ms[level]), float(g.capacity_rps[level]))
    return point(t, pred, params, share, level * params.grid_step)


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


Profiles = tuple[dict[tuple[str, str], Profile], list[str]]


def profiles_of(problem: Problem) -> Profiles:
    """Build once, pass to :func:`greedy`, :func:`static` and :func:`oracle`."""
    return _profiles(problem)


def _profiles(problem: Problem) -> Profiles:
    """Profiles per (tenant, GPU model), built together per predictor; identical tenants share
    one. Errors for tenants without a predictor."""
    out: dict[tuple[str, str], Profile] = {}
    missing: list[str] = []
    todo: dict[tuple[str, str], dict[tuple[object, ...], list[TenantSpec]]] = {}
    gpus = {g.name: g for g in problem.gpus}
    for t in problem.tenants:
        for gpu in gpus.values():
            if (t.model, gpu.name) not in problem.predictors:
                missing.append(f"{t.name}: no predictor for ({t.model}, {gpu.name})")
                continue
            key = (t.arch, t.demand_rps, t.prompt_tokens, t.output_tokens, t.ttft_slo_ms,
                   t.tpot_slo_ms, t.max_batch, t.input_bytes_per_request, t.prompt_tokens_p99)
            todo.setdefault((t.model, gpu.name), {}).setdefault(key, []).append(t)
    for (model, gname), kinds in todo.items():
        reps = [same[0] for same in kinds.values()]
        built = build_profiles(reps, gpus[gname], problem.predictors[(model, gname)],
                               problem.params)
        for same, prof in zip(kinds.values(), built, strict=True):
            for t in same:
                out[(t.name, gname)] = prof
    return out, missing


def _share_at(prof: Profile, units: int, params: AllocParams) -> int:
    lvl = _level_of(units, params)
    return prof.shares[lvl] if lvl < len(prof.shares) else INFEASIBLE


def _finish(
    problem: Problem, method: str, placed: Mapping[str, int],
    profiles: Mapping[tuple[str, str], Profile],
    reasons: Mapping[str, str], *, shares: Mapping[str, int] | None = None, optimal: bool = True,
    detail: str = "", lower_bound_pct: float | None = None,
) -> Plan:
    """Turn a placement into a plan with predicted latencies at the final co-runner levels.

    ``shares`` fixes the shares (static baseline); otherwise each tenant gets S_i(level)."""
    gpu_units: dict[int, int] = {}
    for name, g in placed.items():
        gpu_units[g] = gpu_units.get(g, 0) + profiles[(name, problem.gpus[g].name)].activity_units
    out: dict[str, Assignment] = {}
    mem_of = {n: p.memory_bytes for (n, _), p in profiles.items()}
    for t in problem.tenants:
        if t.name not in placed:
            mem = mem_of.get(t.name, 0)
            out[t.name] = Assignment(t.name, None, None, mem, False,
                                     reasons.get(t.name, "unplaced"))
            continue
        g = placed[t.name]
        gpu = problem.gpus[g]
        prof = profiles[(t.name, gpu.name)]
        others = gpu_units[g] - prof.activity_units
        lvl = _level_of(others, problem.params)
        share = shares[t.name] if shares is not None else _share_at(prof, others, problem.params)
        if share > 100 or lvl >= len(prof.shares):
            out[t.name] = Assignment(t.name, g, None, prof.memory_bytes, False,
                                     f"co-runner activity {others / UNITS:.2f} leaves no share")
            continue
        pt = _point_at(t, problem.predictors[(t.model, gpu.name)], problem.params, prof, lvl,
                       share)
        ok = pt.feasible and share >= prof.min_share_pct
        reason = "" if ok else _violation(t, pt, share, prof)
        out[t.name] = Assignment(
            t.name, g, share, prof.memory_bytes, ok, reason, pt.batch,
            round(pt.ttft_p99_ms, 3), round(pt.tpot_p99_ms, 3), prof.activity_units / UNITS,
        )
    return Plan(method, out, optimal, detail, lower_bound_pct)


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


def greedy(problem: Problem, built: Profiles | None = None) -> Plan:
    """Paper A's order (descending demand); if that strands a tenant, retry in descending order
    of the tenant's own minimal share (first-fit-decreasing style) and keep the better plan."""
    profiles, missing = built if built is not None else _profiles(problem)
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
    step = round(params.grid_step * UNITS)
    reasons: dict[str, str] = {m.split(":", 1)[0]: m.split(": ", 1)[1] for m in missing}
    n_gpus = len(problem.gpus)
    members: list[list[Profile]] = [[] for _ in range(n_gpus)]
    units = [0] * n_gpus
    total = [0] * n_gpus
    mem_used = [0] * n_gpus
    active: list[tuple[int, int]] = []  # (activity units, gpu) of non-empty GPUs, sorted
    empty: dict[str, list[int]] = {}
    for g, spec in enumerate(problem.gpus):
        empty.setdefault(spec.name, []).append(g)
    placed: dict[str, int] = {}

    def share(prof: Profile, others: int) -> int:
        lvl = -(-others // step)
        return prof.shares[lvl] if lvl < len(prof.shares) else INFEASIBLE

    for t in order:
        if t.name in reasons:
            continue
        alone = [profiles[(t.name, name)] for name in empty]
        if all(p.reason for p in alone):
            reasons[t.name] = alone[0].reason
            continue
        # Candidates: the least active non-empty GPUs that could take the tenant at all (its own
        # share at the GPU's current activity fits the free share, its memory the free memory),
        # and the first empty GPU of each model.
        cands: list[int] = []
        for u, g in active:
            prof = profiles[(t.name, problem.gpus[g].name)]
            if (mem_used[g] + prof.memory_bytes <= problem.gpus[g].memory_bytes
                    and total[g] + share(prof, u) <= 100):
                cands.append(g)
                if len(cands) == params.candidates:
                    break
        cands.extend(free[0] for free in empty.values() if free)
        best: tuple[int, int, int] | None = None
        best_shares: list[int] = []
        for g in cands:
            prof = profiles[(t.name, problem.gpus[g].name)]
            if prof.reason or mem_used[g] + prof.memory_bytes > problem.gpus[g].memory_bytes:
                continue
            new_units = units[g] + prof.activity_units
            shares = [share(prof, units[g])]
            shares.extend(share(pm, new_units - pm.activity_units) for pm in members[g])
            new_total = sum(shares)
            if new_total > 100 or max(shares) > 100:
                continue
            key = (new_total - total[g], new_units, g)
            if best is None or key < best:
                best, best_shares = key, shares
        if best is None:
            reasons[t.name] = ("no GPU has room for it (share capacity, memory or co-runner "
                               "interference)")
            continue
        g = best[2]
        prof = profiles[(t.name, problem.gpus[g].name)]
        if members[g]:
            active.pop(bisect.bisect_left(active, (units[g], g)))
        else:
            empty[problem.gpus[g].name].remove(g)
        members[g].append(prof)
        units[g] += prof.activity_units
        mem_used[g] += prof.memory_bytes
        total[g] = sum(best_shares)
        bisect.insort(active, (units[g], g))
        placed[t.name] = g
    return _finish(problem, "greedy", placed, profiles, reasons)


# -- static baseline ----------------------------------------------------------------------------


def static(problem: Problem, built: Profiles | None = None) -> Plan:
    """The operator's fixed shares, placed first-fit decreasing (share and memory capacity);
    the SLO check then uses the same predictors and co-runner levels as the planners."""
    profiles, missing = built if built is not None else _profiles(problem)
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


def _knapsack_bound(acts: Sequence[int], need: Sequence[int], skip: int) -> float:
    """Largest co-runner activity a GPU can hold besides tenant ``skip``: every co-runner j
    needs at least its share S_j(0), and shares sum to <= 100 %, so the fractional knapsack
    (value a_j, weight S_j(0), capacity 100) bounds it. The big-M of the interference rows:
    the tighter it is, the stronger the LP relaxation."""
    items = sorted(((a / max(w, 1), a, w) for j, (a, w) in enumerate(zip(acts, need,
                                                                         strict=True))
                    if j != skip and w <= 100), reverse=True)
    room, total = 100.0, 0.0
    for _, a, w in items:
        if room <= 0:
            break
        take = min(1.0, room / w)
        total += take * a
        room -= take * w
    return total



def oracle(problem: Problem, built: Profiles | None = None) -> Plan:
    # imported here: the daemon's re-planning never needs the MILP stack (memory footprint)
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    params = problem.params
    profiles, missing = built if built is not None else _profiles(problem)
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
        acts = [profiles[(t.name, spec.name)].activity_units for t in tenants]
        need = [profiles[(t.name, spec.name)].shares[0] for t in tenants]
        for i in range(len(tenants)):
            own = by_tg.get((i, g))
            if not own:
                continue
            big_m = _knapsack_bound(acts, need, skip=i)
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
    bound = getattr(res, "mip_dual_bound", None)
    return _finish(problem, "oracle", placed, profiles, reasons, optimal=optimal,
                   detail=str(res.message),
                   lower_bound_pct=float(bound) if bound is not None else None)
