"""Detection: windowed quantiles from per-tick sketches, unknown windows, verdicts."""

from __future__ import annotations

import pytest

from gpuguardd.model.sketch import FrozenSketch
from gpuguardd.model.snapshot import LatencyWindow
from gpuguardd.policy.window import TailWindow, Verdict, read_tail


def _window(ticks: list[tuple[float, list[float]]], window_s: float = 10.0) -> TailWindow:
    w = TailWindow()
    for at, xs in ticks:
        w = w.push(at, LatencyWindow(ttft=FrozenSketch.of(xs)), window_s)
    return w


def test_window_keeps_only_the_last_window_s_seconds() -> None:
    w = _window([(t, [0.001 * t]) for t in range(0, 30, 2)], window_s=10.0)
    assert [t.at for t in w.ticks] == [20, 22, 24, 26, 28]


def test_window_merges_ticks_and_reports_quantiles_within_sketch_accuracy() -> None:
    xs = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    w = _window([(1.0, xs[:500]), (2.0, xs[500:])])
    r = read_tail(w, source_ok=True, ttft_slo_s=0.5, tpot_slo_s=None, min_samples=20,
                  recovery_margin=0.2)
    assert r.ttft is not None
    assert r.ttft.p50 == pytest.approx(0.5, rel=0.02)
    assert r.ttft.p99 == pytest.approx(0.99, rel=0.02)
    assert r.ttft.p999 == pytest.approx(0.999, rel=0.02)


def test_failed_source_adds_nothing_and_marks_the_window_unknown() -> None:
    w = _window([(1.0, [0.01] * 50)])
    w2 = w.push(2.0, LatencyWindow(ttft=FrozenSketch.of([9.0] * 50), ok=False), 10.0)
    assert len(w2.ticks) == 1
    r = read_tail(w2, source_ok=False, ttft_slo_s=0.015, tpot_slo_s=None, min_samples=20,
                  recovery_margin=0.2)
    assert r.verdict is Verdict.UNKNOWN and r.ratio is None


@pytest.mark.parametrize(
    ("samples", "ttft_slo", "tpot_slo", "verdict"),
    [
        ([0.010] * 100, 0.015, None, Verdict.CALM),  # 10 < 0.8 x 15
        ([0.013] * 100, 0.015, None, Verdict.DEADBAND),  # 12 <= 13 <= 15
        ([0.010] * 90 + [0.030] * 10, 0.015, None, Verdict.VIOLATING),  # p99 = 30 ms
        ([0.030] * 10, 0.015, None, Verdict.UNKNOWN),  # 10 samples < min 20: not guessed
        ([0.010] * 100, None, None, Verdict.UNKNOWN),  # no SLO: reported, never judged
    ],
)
def test_verdicts(
    samples: list[float], ttft_slo: float | None, tpot_slo: float | None, verdict: Verdict
) -> None:
    r = read_tail(_window([(1.0, samples)]), source_ok=True, ttft_slo_s=ttft_slo,
                  tpot_slo_s=tpot_slo, min_samples=20, recovery_margin=0.2)
    assert r.verdict is verdict


def test_tpot_slo_is_judged_when_it_is_the_worse_metric() -> None:
    w = TailWindow().push(
        1.0,
        LatencyWindow(ttft=FrozenSketch.of([0.005] * 50), tpot=FrozenSketch.of([0.2] * 50)),
        10.0,
    )
    r = read_tail(w, source_ok=True, ttft_slo_s=0.015, tpot_slo_s=0.05, min_samples=20,
                  recovery_margin=0.2)
    assert r.verdict is Verdict.VIOLATING and r.metric == "tpot"
    assert r.ratio == pytest.approx(4.0, rel=0.02)
