"""The shipped built-in predictors (gpuguardd/vgpu/builtin_params.py) match a fresh fit."""

from __future__ import annotations

import dataclasses
import math

from gpuguardd.model.llm import BUILTIN, LlmArch
from gpuguardd.vgpu import builtin, synthetic
from gpuguardd.vgpu.builtin_params import PARAMS
from gpuguardd.vgpu.gpus import GPUS
from gpuguardd.vgpu.predictor import Predictor

GRID = [(b, f, u) for b in (1, 4, 16, 32) for f in (0.1, 0.35, 1.0) for u in (0.0, 0.4)]


def _close(a: Predictor, b: Predictor) -> None:
    """Same predictions (not the same parameters: a flat direction of the least-squares
    problem may be resolved differently by another BLAS) within 1e-6 relative."""
    for bs, f, u in GRID:
        for p in (256, 1024, 4096):
            assert math.isclose(a.ttft_ms(bs, f, u, p), b.ttft_ms(bs, f, u, p), rel_tol=1e-6)
            assert math.isclose(a.tpot_ms(bs, f, u, p, 128), b.tpot_ms(bs, f, u, p, 128),
                                rel_tol=1e-6)
    assert math.isclose(a.ttft_tail, b.ttft_tail, rel_tol=1e-6)
    assert math.isclose(a.tpot_tail, b.tpot_tail, rel_tol=1e-6)
    assert a.pcie_bps == b.pcie_bps


def test_every_builtin_model_on_every_gpu_is_shipped_and_matches_a_fresh_fit() -> None:
    assert set(PARAMS) == {builtin.key(m, g) for m in BUILTIN for g in GPUS}, (
        "run scripts/gen-builtin-predictors")
    for arch in BUILTIN.values():
        for spec in GPUS.values():
            shipped = builtin.precomputed(arch, spec)
            assert shipped is not None
            _close(shipped, synthetic.fitted_predictor(arch, spec))


def test_a_custom_architecture_is_fitted_not_looked_up() -> None:
    arch = BUILTIN["Qwen3-1.7B"]
    custom = dataclasses.replace(arch, num_layers=arch.num_layers + 4)
    assert isinstance(custom, LlmArch)
    spec = GPUS["A100-SXM4-80GB"]
    assert builtin.precomputed(custom, spec) is None
    fitted = builtin.predictor(custom, spec)
    assert fitted.tpot_ms(1, 0.5, 0.0, 1024, 128) > builtin.predictor(arch, spec).tpot_ms(
        1, 0.5, 0.0, 1024, 128)
