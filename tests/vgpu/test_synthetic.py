from __future__ import annotations

import numpy as np
import pytest

from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import synthetic

from .conftest import A100

LLAMA = BUILTIN["llama2-7b"]


def test_calibration_on_a_full_a100() -> None:
    assert synthetic.prefill_s(LLAMA, A100, 1, 512, 1.0, 0.0, 0) == pytest.approx(0.040, rel=0.05)
    assert synthetic.decode_step_s(LLAMA, A100, 1, 512, 128, 1.0, 0.0) == pytest.approx(
        0.010, rel=0.05)


def test_time_slicing_and_contention() -> None:
    full = synthetic.prefill_s(LLAMA, A100, 4, 512, 1.0, 0.0, 0)
    half = synthetic.prefill_s(LLAMA, A100, 4, 512, 0.5, 0.0, 0)
    assert 1.8 < half / full < 2.1  # host time does not scale with the share
    assert synthetic.prefill_s(LLAMA, A100, 4, 512, 0.5, 0.8, 2) > half
    d0 = synthetic.decode_step_s(LLAMA, A100, 8, 512, 128, 0.5, 0.0)
    assert synthetic.decode_step_s(LLAMA, A100, 8, 512, 128, 0.5, 0.6) > 1.1 * d0


def test_seeded_and_noisy() -> None:
    sweep = synthetic.Sweep(batches=(1, 8), shares_pct=(30, 100), prompt_tokens=(512,),
                            colocated=(0, 1))
    a = synthetic.profile(LLAMA, A100, np.random.default_rng(5), sweep)
    b = synthetic.profile(LLAMA, A100, np.random.default_rng(5), sweep)
    c = synthetic.profile(LLAMA, A100, np.random.default_rng(6), sweep)
    assert a == b and a != c
    exact = synthetic.profile(LLAMA, A100, np.random.default_rng(5), sweep, noise_sigma=0.0)
    ratios = [x.ttft_ms / y.ttft_ms for x, y in zip(a, exact, strict=True) if x.colocated == 0]
    assert any(abs(r - 1) > 0.001 for r in ratios)
