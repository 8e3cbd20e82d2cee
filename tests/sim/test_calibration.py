"""Timing calibration: the shipped table, its derivation, and the Llama-2-7B anchor."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from gpuguardd.model.llm import BUILTIN, builtin
from gpuguardd.sim import calibration
from gpuguardd.sim.calibration import ModelCost, decode_step_s, derive, prefill_s
from gpuguardd.sim.scenario import loads

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PERF = SHARED / "splitwise" / "perf_model.csv"

ONE_A100_80 = """<system version="1">
  <cpu numaid="0" affinity="ffffffff">
    <pci busid="0000:10:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
  </cpu>
</system>
"""


def test_anchor_llama2_7b_on_a100_80gb() -> None:
    cal = calibration.load()
    g = cal.gpu("A100-SXM4-80GB")
    arch = builtin("llama2-7b")
    pre = prefill_s(arch, g, 512, 0, 1.0, cal.layer_overhead_s)
    dec = decode_step_s(arch, g, 1, 512, 1.0, cal.layer_overhead_s)
    assert 0.035 < pre < 0.045  # "roughly 40 ms"
    assert 0.009 < dec < 0.0125  # "roughly 10 ms per token"


def test_model_cost_matches_the_architecture() -> None:
    for arch in BUILTIN.values():
        cost = ModelCost.of(arch)
        for new, cached in ((512, 0), (64, 448), (1, 1023)):
            want = arch.prefill_flops(new + cached) - arch.prefill_flops(cached)
            assert cost.prefill_flops(new, cached) == pytest.approx(want, rel=1e-12)


def test_fractions_scale_time() -> None:
    cal = calibration.load()
    g = cal.gpu("A100-SXM4-40GB")
    arch = builtin("Qwen3-0.6B")
    full = prefill_s(arch, g, 256, 0, 1.0, 0.0)
    assert prefill_s(arch, g, 256, 0, 14 / 108, 0.0) == pytest.approx(full * 108 / 14)
    assert decode_step_s(arch, g, 1, 256, 0.125, 0.0) == pytest.approx(
        8 * decode_step_s(arch, g, 1, 256, 1.0, 0.0))


def test_shipped_table_documents_every_builtin_model() -> None:
    text = resources.files("gpuguardd.sim").joinpath("data/calibration.toml").read_text()
    data = tomllib.loads(text)
    assert set(data["model"]) == set(BUILTIN)
    cal = calibration.load()
    for name, row in data["model"].items():
        arch = builtin(name)
        a100 = prefill_s(arch, cal.gpu("A100-SXM4-80GB"), 512, 0, 1.0, cal.layer_overhead_s)
        assert row["a100_prefill_512_ms"] == pytest.approx(a100 * 1e3, abs=0.01)


@pytest.mark.skipif(not PERF.is_file(), reason=f"shared data absent: {PERF}")
def test_shipped_rates_are_derived_from_splitwise() -> None:
    derived = derive(PERF)
    cal = calibration.load()
    for gpu in ("A100-SXM4-80GB", "H100-SXM5-80GB"):
        assert cal.gpu(gpu).flops_eff == pytest.approx(derived[gpu].flops_eff, rel=1e-3)
        assert cal.gpu(gpu).hbm_eff_bps == pytest.approx(derived[gpu].hbm_eff_bps, rel=1e-3)


def test_anchor_end_to_end_in_the_simulator(tmp_path: Path) -> None:
    """Llama-2-7B alone on one A100-80GB, 512-token prompts, no queueing (0.5 req/s)."""
    (tmp_path / "one.xml").write_text(ONE_A100_80)
    sc = loads(f"""
[host]
topology = "{tmp_path / 'one.xml'}"
gpu = "A100-SXM4-80GB"
[[tenant]]
name = "llm"
kind = "inference"
model = "llama2-7b"
slo = {{ ttft_p99_ms = 100.0 }}
arrivals = {{ rate_rps = 0.5 }}
prompt_tokens = 512
output_tokens = 16
token_sigma = 0.0
host_delay_ms = 0.0
""", seconds=400)
    host = sc.build_host()
    host.run(400, 5.0)
    _, ttft = host.ttft_samples("llm")
    assert 150 < ttft.size < 260
    assert 35.0 < float(np.median(ttft)) < 45.0
    tpot = host.results()["tenants"]["llm"]["tpot_p99_ms"]
    assert 9.0 < tpot < 13.0
