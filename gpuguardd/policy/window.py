"""Sliding-window tail statistics of one tenant, built from the per-tick latency sketches.

Each tick contributes the sketches its source delivered (``LatencyWindow``); the window keeps the
ticks of the last ``window_s`` seconds and merges them on demand. Memory is bounded by the number
of ticks in the window times the sketch's bucket bound, never by the number of requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from gpuguardd.model.sketch import FrozenSketch, Sketch
from gpuguardd.model.snapshot import LatencyWindow


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Windowed quantiles, seconds."""

    p50: float
    p99: float
    p999: float

    def ms(self) -> str:
        return f"p50 {self.p50 * 1e3:.1f} p99 {self.p99 * 1e3:.1f} p999 {self.p999 * 1e3:.1f} ms"


class Verdict(StrEnum):
    """How one window compares with the SLO."""

    UNKNOWN = "unknown"  # too few samples or the source failed: neither calm nor violating
    VIOLATING = "violating"  # some p99 above its SLO
    DEADBAND = "deadband"  # within the SLO but above the recovery bound
    CALM = "calm"  # every p99 below (1 - recovery_margin) x SLO


@dataclass(frozen=True, slots=True)
class TickSketches:
    at: float
    ttft: FrozenSketch
    tpot: FrozenSketch


@dataclass(frozen=True, slots=True)
class TailWindow:
    """The ticks of the last ``window_s`` seconds (oldest first)."""

    ticks: tuple[TickSketches, ...] = ()

    def push(self, now: float, latency: LatencyWindow, window_s: float) -> TailWindow:
        """Add this tick's sketches and drop ticks older than ``now - window_s``.

        A failed source (``ok`` False) adds nothing: its samples are unknown, not zero.
        """
        kept = tuple(t for t in self.ticks if t.at > now - window_s and t.at <= now)
        if latency.ok and (latency.ttft.count or latency.tpot.count):
            kept = (*kept, TickSketches(now, latency.ttft, latency.tpot))
        return TailWindow(kept)

    def merged(self) -> tuple[Sketch, Sketch]:
        ttft, tpot = Sketch(), Sketch()
        for t in self.ticks:
            ttft.merge(t.ttft)
            tpot.merge(t.tpot)
        return ttft, tpot


def quantiles(sketch: Sketch, min_samples: int) -> Quantiles | None:
    """p50/p99/p999 of ``sketch``, or None when it holds fewer than ``min_samples`` samples."""
    if sketch.count < min_samples:
        return None
    p50, p99, p999 = sketch.quantiles(0.5, 0.99, 0.999)
    if p50 is None or p99 is None or p999 is None:
        return None
    return Quantiles(p50, p99, p999)


@dataclass(frozen=True, slots=True)
class TailReading:
    """One tick's view of a protected tenant's tail against its SLO."""

    ttft: Quantiles | None
    tpot: Quantiles | None
    verdict: Verdict
    #: max over the tenant's SLOs of p99 / SLO (1.0 = exactly at the SLO); None when unknown
    ratio: float | None
    #: which metric drives ``ratio`` ("ttft" or "tpot")
    metric: str
    #: the p99 and SLO (seconds) of that metric
    p99_s: float | None
    slo_s: float | None
    #: samples in the window, and how many of them exceed the SLO of ``metric``
    samples: int = 0
    above: int = 0

    def significant(self, level: float) -> bool:
        """Is the excess over the SLO more than the 1 % a p99 SLO allows, at ``level``?"""
        if level >= 1.0:
            return True
        return binom_sf(self.above, self.samples, 0.01) <= level


def read_tail(
    window: TailWindow,
    *,
    source_ok: bool,
    ttft_slo_s: float | None,
    tpot_slo_s: float | None,
    min_samples: int,
    recovery_margin: float,
) -> TailReading:
    """Classify the window.

    TTFT is the primary metric: it drives the ratio unless only a TPOT SLO exists or TPOT is the
    worse of the two. A metric without an SLO is reported but never judged; a metric with an SLO
    but too few samples makes the whole window unknown only if no other judged metric violates
    (a known violation is not hidden by an unknown neighbour).
    """
    ttft_sk, tpot_sk = window.merged()
    q_ttft = quantiles(ttft_sk, min_samples)
    q_tpot = quantiles(tpot_sk, min_samples)
    if not source_ok:
        return TailReading(q_ttft, q_tpot, Verdict.UNKNOWN, None, "ttft", None, None)
    judged: list[tuple[str, float | None, float]] = []
    if ttft_slo_s is not None:
        judged.append(("ttft", q_ttft.p99 if q_ttft else None, ttft_slo_s))
    if tpot_slo_s is not None:
        judged.append(("tpot", q_tpot.p99 if q_tpot else None, tpot_slo_s))
    known = [(m, p, s) for m, p, s in judged if p is not None]
    if not known:
        return TailReading(q_ttft, q_tpot, Verdict.UNKNOWN, None, "ttft", None, None)
    metric, p99, slo = max(known, key=lambda k: (k[1] or 0.0) / k[2])
    assert p99 is not None
    ratio = p99 / slo
    sk = ttft_sk if metric == "ttft" else tpot_sk
    frozen = sk.frozen()
    if ratio > 1.0:
        verdict = Verdict.VIOLATING
    elif len(known) < len(judged):
        verdict = Verdict.UNKNOWN
    elif ratio < 1.0 - recovery_margin:
        verdict = Verdict.CALM
    else:
        verdict = Verdict.DEADBAND
    return TailReading(q_ttft, q_tpot, verdict, ratio, metric, p99, slo, frozen.count,
                       count_above(frozen, slo))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): exact for small n, normal approximation beyond."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if n <= 5000:
        # 1 - P(X <= k - 1), summing the pmf by its ratio recursion in log space
        log_pmf = n * math.log1p(-p)
        cdf = math.exp(log_pmf)
        for i in range(1, k):
            log_pmf += math.log((n - i + 1) / i) + math.log(p) - math.log1p(-p)
            cdf += math.exp(log_pmf)
        return max(0.0, 1.0 - cdf)
    mu, sd = n * p, math.sqrt(n * p * (1 - p))
    return 0.5 * math.erfc((k - 0.5 - mu) / (sd * math.sqrt(2.0)))


def count_above(sketch: FrozenSketch, x: float) -> int:
    """How many samples exceed ``x`` (within the sketch's relative accuracy)."""
    return sketch.count_above(x)
