"""The pure-Python model the daemon evaluates (vgpu/scalar.py) gives the numpy allocator's
answers: feasibility, batch and shares exactly, latencies within 1e-6 relative."""

from __future__ import annotations

import math
import random

import pytest

from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import allocator, scalar

from .conftest import A100

MODELS = ["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "DeepSeek-R1-Distill-Qwen-7B"]


def _tenants(n: int, seed: int) -> list[allocator.TenantSpec]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        m = r.choice(MODELS)
        p = r.choice([256, 512, 1024, 2048])
        out.append(allocator.TenantSpec(
            f"t{i}", m, BUILTIN[m], round(r.uniform(0.05, 4.0), 3), p, r.choice([64, 128, 256]),
            r.choice([None, 300.0, 800.0, 1500.0]), r.choice([None, 40.0, 60.0, 80.0]),
            max_batch=r.choice([8, 16, 32]), prompt_tokens_p99=r.choice([None, int(p * 1.73)])))
    return [t for t in out if t.ttft_slo_ms is not None or t.tpot_slo_ms is not None]


@pytest.mark.parametrize(("seed", "params"), [
    (1, allocator.AllocParams()), (2, allocator.AllocParams()),
    (3, allocator.AllocParams(slo_confidence=0.9, slo_window_s=60.0))])
def test_points_and_required_shares_match_the_numpy_model(
        seed: int, params: allocator.AllocParams,
        a100_predictors: dict[tuple[str, str], object]) -> None:
    for t in _tenants(12, seed):
        pred = a100_predictors[(t.model, A100.name)]
        assert isinstance(pred, allocator.Predictor)
        prof = allocator.build_profile(t, A100, pred, params)
        for lvl in (0, 1, 4, 9, 20):
            assert scalar.required_share(t, A100, pred, params, lvl) == prof.shares[lvl], (t, lvl)
        assert scalar.required_share(t, A100, pred, params, 21) == scalar.INFEASIBLE
        assert scalar.min_share_pct(t, A100) == prof.min_share_pct
        for share in (5, 12, 26, 40, 77, 100):
            for act in (0.0, 0.25, 0.6):
                a = allocator.point(t, pred, params, share, act)
                b = scalar.point(t, pred, params, share, act)
                assert (a.feasible, a.batch) == (b.feasible, b.batch), (t, share, act)
                for x, y in ((a.ttft_p99_ms, b.ttft_p99_ms), (a.tpot_p99_ms, b.tpot_p99_ms),
                             (a.capacity_rps, b.capacity_rps)):
                    assert (math.isclose(x, y, rel_tol=1e-6)
                            or (math.isnan(x) and math.isnan(y)) or x == y), (t, share, act)


def test_erlang_c_and_decay_rate_match_the_numpy_helpers() -> None:
    import numpy as np

    for c in (1, 2, 8, 32):
        for load in (0.0, 0.3, 0.9 * c, c - 1e-3, float(c), 2.0 * c):
            want = float(allocator._erlang_c(np.array([c]), np.array([load]))[0])
            assert math.isclose(scalar.erlang_c(c, load), want, rel_tol=1e-9, abs_tol=1e-300)
    for lam, mean, sd in ((0.001, 100.0, 10.0), (0.003, 250.0, 60.0), (0.0, 5.0, 1.0),
                          (0.01, 150.0, 5.0), (0.0002, 30.0, 0.0)):
        want = float(allocator._decay_rate(np.array(lam), np.array(mean), np.array(sd)))
        got = scalar.decay_rate(lam, mean, sd)
        assert got == want or math.isclose(got, want, rel_tol=1e-6)
