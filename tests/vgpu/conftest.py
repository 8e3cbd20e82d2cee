from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import allocator, synthetic
from gpuguardd.vgpu.gpus import GPUS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLE = ROOT / "etc" / "allocate-example.toml"
A100 = GPUS["A100-SXM4-80GB"]


@pytest.fixture(scope="session")
def a100_predictors() -> dict[tuple[str, str], object]:
    return {(name, A100.name): synthetic.fitted_predictor(arch, A100)
            for name, arch in BUILTIN.items()}


@pytest.fixture(scope="session")
def a100_mps_predictors() -> dict[tuple[str, str], object]:
    """Fitted on profiles with co-runner contention (kernels overlap, as under MPS)."""
    return {(name, A100.name): synthetic.fitted_predictor(arch, A100, cal=synthetic.MPS)
            for name, arch in BUILTIN.items()}


def example_tenants() -> tuple[allocator.TenantSpec, ...]:
    data = tomllib.loads(EXAMPLE.read_text())
    return tuple(
        allocator.TenantSpec(
            name=t["name"], model=t["model"], arch=BUILTIN[t["model"]],
            demand_rps=t["demand_rps"], prompt_tokens=t["prompt_tokens"],
            output_tokens=t["output_tokens"], ttft_slo_ms=t["slo"]["ttft_p99_ms"],
            tpot_slo_ms=t["slo"]["tpot_p99_ms"], static_share_pct=t["static_share_pct"],
        )
        for t in data["tenant"]
    )
