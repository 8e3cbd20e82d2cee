from __future__ import annotations

import json

import pytest

from gpuguardd.model.llm import LlmArch, ModelConfigError
from gpuguardd.vgpu import memory

from .conftest import FIXTURES

# Published totals: Qwen3 model cards ("Number of Parameters"), DeepSeek-R1-Distill model pages
# on the Hugging Face Hub (safetensors parameter count).
PUBLISHED = {
    "Qwen3-0.6B": 0.6e9,
    "Qwen3-1.7B": 1.7e9,
    "Qwen3-4B": 4.0e9,
    "Qwen3-8B": 8.2e9,
    "DeepSeek-R1-Distill-Qwen-1.5B": 1.78e9,
    "DeepSeek-R1-Distill-Qwen-7B": 7.62e9,
}


def load(name: str) -> dict[str, object]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_3_percent_of_published(name: str) -> None:
    arch = LlmArch.from_hf_config(name, load(name))
    assert abs(arch.params - PUBLISHED[name]) / PUBLISHED[name] < 0.03


def test_estimate_adds_weights_kv_and_overhead() -> None:
    est = memory.estimate_from_config("Qwen3-8B", load("Qwen3-8B"), prompt_tokens=1000,
                                      output_tokens=24, max_batch=4)
    arch = LlmArch.from_hf_config("Qwen3-8B", load("Qwen3-8B"))
    assert arch.kv_bytes_per_token == 2 * 36 * 8 * 128 * 2  # 144 KiB with GQA
    assert est.weights_bytes == arch.params * 2
    assert est.kv_cache_bytes == arch.kv_bytes_per_token * 1024 * 4
    assert est.overhead_bytes == int(0.2 * est.weights_bytes) + 512 * 2**20
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes


def test_float32_config_doubles_the_weights() -> None:
    cfg = load("Qwen3-0.6B")
    bf16 = memory.estimate_from_config("a", cfg, prompt_tokens=1, output_tokens=1, max_batch=1)
    f32 = memory.estimate_from_config("a", {**cfg, "torch_dtype": "float32"}, prompt_tokens=1,
                                      output_tokens=1, max_batch=1)
    assert f32.weights_bytes == 2 * bf16.weights_bytes


def test_missing_field_is_named() -> None:
    cfg = load("Qwen3-4B")
    del cfg["intermediate_size"]
    with pytest.raises(ModelConfigError, match="intermediate_size"):
        memory.estimate_from_config("x", cfg, prompt_tokens=1, output_tokens=1, max_batch=1)


@pytest.mark.parametrize(("need", "cap", "share"), [
    (1, 100, 1), (10, 100, 10), (11, 100, 11), (1001, 10_000, 11), (100, 100, 100),
    (101, 100, 101),
])
def test_memory_feasible_minimum_share(need: int, cap: int, share: int) -> None:
    assert memory.min_share_pct(need, cap) == share
