from __future__ import annotations

import tomllib

import numpy as np
import pytest

from gpuguardd.model.llm import BUILTIN
from gpuguardd.sim import calibration as sim_calibration
from gpuguardd.vgpu import synthetic

from .conftest import A100, ROOT

LLAMA = BUILTIN["llama2-7b"]


def test_calibration_on_a_full_a100() -> None:
    # the simulator's documented per-model figures (gpuguardd/sim/data/calibration.toml)
    assert synthetic.prefill_s(LLAMA, A100, 1, 512, 1.0, 0.0, 0) == pytest.approx(
        0.03805, rel=0.03)
    assert synthetic.decode_step_s(LLAMA, A100, 1, 512, 0, 1.0, 0.0) == pytest.approx(
        0.011282, rel=0.01)


def test_default_calibration_is_the_simulators() -> None:
    sim = tomllib.loads((ROOT / "gpuguardd" / "sim" / "data" / "calibration.toml").read_text())
    g = sim["gpu"][A100.name]
    cal = synthetic.DEFAULT
    assert A100.peak_flops * cal.prefill_efficiency == pytest.approx(g["flops_eff"], rel=1e-9)
    assert A100.hbm_bps * cal.hbm_efficiency == pytest.approx(g["hbm_eff_bps"], rel=1e-9)
    assert cal.layer_s == sim["overhead"]["layer_s"]
    assert cal.efficiency_half_tokens == cal.slice_quantum_s == 0.0
    assert cal.prefill_host_s == cal.decode_host_s == 0.0


def test_decode_scales_with_the_share_like_the_simulators() -> None:
    """Under HAMi time slicing the whole HBM time of a step scales like 1/share (only the
    per-layer cost does not): the simulator's decode_step_s at hbm_fraction = share."""
    cal = sim_calibration.load().gpu(A100.name)
    for b, share in ((1, 1.0), (8, 0.25), (32, 0.1)):
        want = sim_calibration.decode_step_s(LLAMA, cal, b, 576, share, synthetic.DEFAULT.layer_s)
        assert synthetic.decode_step_s(LLAMA, A100, b, 512, 128, share, 0.0) == pytest.approx(
            want, rel=0.01)


def test_time_slicing_and_contention() -> None:
    full = synthetic.prefill_s(LLAMA, A100, 4, 512, 1.0, 0.0, 0)
    half = synthetic.prefill_s(LLAMA, A100, 4, 512, 0.5, 0.0, 0)
    assert 1.9 < half / full < 2.0  # the per-layer cost does not scale with the share
    # time slicing (the default): co-runners add only their scheduling delay
    crowded = synthetic.prefill_s(LLAMA, A100, 4, 512, 0.5, 0.8, 2)
    assert crowded == pytest.approx(half + 2 * synthetic.DEFAULT.corunner_delay_s)
    d0 = synthetic.decode_step_s(LLAMA, A100, 8, 512, 128, 0.5, 0.0)
    assert synthetic.decode_step_s(LLAMA, A100, 8, 512, 128, 0.5, 0.6) == d0
    # overlapping kernels (MPS) contend
    mps = synthetic.MPS
    assert synthetic.prefill_s(LLAMA, A100, 4, 512, 0.5, 0.8, 2, mps) > 1.1 * crowded
    assert synthetic.decode_step_s(LLAMA, A100, 8, 512, 128, 0.5, 0.6, mps) > 1.1 * d0


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
