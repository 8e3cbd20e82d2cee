"""Memory a serving tenant needs on its GPU, estimated from the model's ``config.json`` alone.

    memory = weights + kv_cache + overhead
    weights  = params x dtype_bytes                          (``LlmArch.params``)
    kv_cache = kv_bytes_per_token x (prompt + output tokens) x max_batch
    overhead = inference_overhead x weights + runtime_bytes

``inference_overhead`` = 0.2 follows Accelerate's model-size estimator guide ("when performing
inference, expect to add up to an additional 20 %", activations and allocator slack);
``runtime_bytes`` = 512 MiB covers the CUDA context and the serving engine's workspace. Nothing is
downloaded: the architecture comes from the config fields (see ``gpuguardd.model.llm``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpuguardd.model.llm import LlmArch

MIB = 1 << 20
INFERENCE_OVERHEAD = 0.2
RUNTIME_BYTES = 512 * MIB


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


def estimate(
    arch: LlmArch,
    *,
    prompt_tokens: int,
    output_tokens: int,
    max_batch: int,
    inference_overhead: float = INFERENCE_OVERHEAD,
    runtime_bytes: int = RUNTIME_BYTES,
) -> MemoryEstimate:
    if prompt_tokens < 0 or output_tokens < 0 or max_batch < 1:
        raise ValueError("tokens must be >= 0 and max_batch >= 1")
    weights = arch.weight_bytes
    kv = arch.kv_bytes_per_token * (prompt_tokens + output_tokens) * max_batch
    overhead = int(inference_overhead * weights) + runtime_bytes
    return MemoryEstimate(weights, kv, overhead)


def estimate_from_config(
    name: str, cfg: Mapping[str, Any], *, prompt_tokens: int, output_tokens: int, max_batch: int
) -> MemoryEstimate:
    """Same as :func:`estimate` straight from a Hugging Face ``config.json`` dict."""
    return estimate(
        LlmArch.from_hf_config(name, cfg),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        max_batch=max_batch,
    )


def min_share_pct(memory_bytes: int, gpu_memory_bytes: int) -> int:
    """Memory-feasible minimum share: a tenant holding X % of the GPU's memory gets >= X % of it.

    This is paper A's proportional vGPU slice; it also makes the per-GPU share capacity (100 %)
    imply the memory capacity. Returns 101 when the tenant cannot fit at all.
    """
    if memory_bytes > gpu_memory_bytes:
        return 101
    return max(1, math.ceil(100.0 * memory_bytes / gpu_memory_bytes - 1e-9))
