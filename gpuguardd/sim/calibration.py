"""Timing model of LLM inference, calibrated on measured timings (splitwise perf_model.csv).

Prefill is compute-bound and decode memory-bound, so one effective FLOP/s and one effective
HBM byte rate per GPU model carry the calibration:

    prefill_s = FLOPs(new tokens | cached prefix) / (flops_eff · sm_fraction) + layers · t_layer
    step_s    = (weight bytes + Σ context · kv_bytes_per_token) / (hbm_eff · hbm_fraction)
                + layers · t_layer

``flops_eff``/``hbm_eff`` are the medians over splitwise's llama2-70b rows with tensor parallel 2
(the least all-reduce overhead in the table): prefill rows with prompt >= 512 tokens give
FLOPs-per-GPU / prompt_time, decode rows with batch 1 give bytes-per-GPU / token_time.
:func:`derive` recomputes them from the CSV; the shipped ``data/calibration.toml`` holds the
result, and a test checks the two agree when the shared data is present.
"""

from __future__ import annotations

import csv
import statistics
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from gpuguardd.model.llm import LlmArch

#: llama2-70b's public config (the model of the splitwise table; not a built-in tenant model)
LLAMA2_70B = LlmArch.from_hf_config("llama2-70b", {
    "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
    "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
    "vocab_size": 32000, "torch_dtype": "float16",
})

#: splitwise hardware name -> our GPU model name
SPLITWISE_HW = {"a100-80gb": "A100-SXM4-80GB", "h100-80gb": "H100-SXM5-80GB"}


@dataclass(frozen=True, slots=True)
class GpuCalibration:
    flops_eff: float  # FLOP/s a whole GPU reaches in prefill
    hbm_eff_bps: float  # bytes/s a whole GPU reaches in decode


@dataclass(frozen=True, slots=True)
class Calibration:
    gpus: dict[str, GpuCalibration]
    layer_overhead_s: float

    def gpu(self, name: str) -> GpuCalibration:
        try:
            return self.gpus[name]
        except KeyError:
            raise KeyError(f"no calibration for GPU {name!r}") from None


@cache
def load() -> Calibration:
    text = resources.files("gpuguardd.sim").joinpath("data/calibration.toml").read_text("utf-8")
    data = tomllib.loads(text)
    gpus = {
        name: GpuCalibration(float(v["flops_eff"]), float(v["hbm_eff_bps"]))
        for name, v in data["gpu"].items()
    }
    return Calibration(gpus, float(data["overhead"]["layer_s"]))


def derive(perf_model_csv: str | Path) -> dict[str, GpuCalibration]:
    """Effective FLOP/s and HBM bytes/s per GPU from a splitwise-format timing table."""
    flops: dict[str, list[float]] = {}
    bps: dict[str, list[float]] = {}
    with Path(perf_model_csv).open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            hw = SPLITWISE_HW.get(row["hardware"])
            if row["model"] != "llama2-70b" or hw is None or int(row["tensor_parallel"]) != 2:
                continue
            prompt, batch = int(row["prompt_size"]), int(row["batch_size"])
            if prompt >= 512:
                f = LLAMA2_70B.prefill_flops(prompt) * batch / 2
                flops.setdefault(hw, []).append(f / (float(row["prompt_time"]) / 1e3))
            if batch == 1:
                b = LLAMA2_70B.decode_bytes(prompt, 1) / 2
                bps.setdefault(hw, []).append(b / (float(row["token_time"]) / 1e3))
    return {
        hw: GpuCalibration(statistics.median(flops[hw]), statistics.median(bps[hw]))
        for hw in flops
        if hw in bps
    }


@dataclass(frozen=True, slots=True)
class ModelCost:
    """The numbers of an :class:`LlmArch` the timing model needs, computed once (hot path).

    ``prefill_flops(new, cached)`` equals ``arch.prefill_flops(cached + new) -
    arch.prefill_flops(cached)``: matmuls for the new tokens, attention over the whole context.
    """

    layers: int
    matmul_params: int  # parameters without the embedding table
    attn_coeff: float  # 2 · layers · heads · head_dim
    weight_bytes: int
    kv_bytes_per_token: int

    @staticmethod
    def of(arch: LlmArch) -> ModelCost:
        return ModelCost(
            layers=arch.num_layers,
            matmul_params=arch.params - arch.vocab_size * arch.hidden_size,
            attn_coeff=2.0 * arch.num_layers * arch.num_heads * arch.head_dim,
            weight_bytes=arch.weight_bytes,
            kv_bytes_per_token=arch.kv_bytes_per_token,
        )

    def prefill_flops(self, new_tokens: int, cached_tokens: int) -> float:
        total = cached_tokens + new_tokens
        return (2.0 * self.matmul_params * new_tokens
                + self.attn_coeff * (total * total - cached_tokens * cached_tokens))


def prefill_s(arch: LlmArch | ModelCost, cal: GpuCalibration, new_tokens: int,
              cached_tokens: int, sm_fraction: float, layer_overhead_s: float) -> float:
    """Prefill of ``new_tokens`` on top of a cached prefix, on ``sm_fraction`` of the GPU."""
    if new_tokens <= 0:
        return 0.0
    cost = arch if isinstance(arch, ModelCost) else ModelCost.of(arch)
    flops = cost.prefill_flops(new_tokens, cached_tokens)
    return flops / (cal.flops_eff * sm_fraction) + cost.layers * layer_overhead_s


def decode_step_s(arch: LlmArch | ModelCost, cal: GpuCalibration, batch: int,
                  context_tokens: float, hbm_fraction: float, layer_overhead_s: float) -> float:
    """One decode iteration for ``batch`` sequences of ``context_tokens`` average length."""
    cost = arch if isinstance(arch, ModelCost) else ModelCost.of(arch)
    read = cost.weight_bytes + batch * context_tokens * cost.kv_bytes_per_token
    return read / (cal.hbm_eff_bps * hbm_fraction) + cost.layers * layer_overhead_s


def model_table(prompt_tokens: int = 512) -> str:
    """The documented per-model calibration (TOML), from the built-in model catalogue."""
    from gpuguardd.model.llm import BUILTIN

    cal = load()
    lines: list[str] = []
    for name, arch in BUILTIN.items():
        lines.append(f'[model."{name}"]')
        for gpu in ("A100-SXM4-80GB", "H100-SXM5-80GB"):
            g = cal.gpu(gpu)
            pre = prefill_s(arch, g, prompt_tokens, 0, 1.0, cal.layer_overhead_s) * 1e3
            dec = decode_step_s(arch, g, 1, prompt_tokens, 1.0, cal.layer_overhead_s) * 1e3
            key = gpu.split("-")[0].lower()
            lines.append(f"{key}_prefill_{prompt_tokens}_ms = {pre:.2f}")
            lines.append(f"{key}_decode_ms = {dec:.3f}")
        lines.append("")
    return "\n".join(lines)
