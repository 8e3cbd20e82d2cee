"""The allocation input file (``gpuguardd allocate --tenants FILE``), validated like the config.

    slo_window_s = 3600              # optional: the window a p99 is held to its SLO over
    [[gpu]]
    model = "A100-SXM4-80GB"
    count = 2
    [[tenant]]
    name = "qwen3-4b"
    model = "Qwen3-4B"               # a built-in model, or model_config = "path/to/config.json"
    slo = { ttft_p99_ms = 600.0, tpot_p99_ms = 60.0 }
    demand_rps = 2.0
    prompt_tokens = 1024
    output_tokens = 128
    static_share_pct = 50

Every error names its key path (``tenant[1].demand_rps``); reading ``model_config`` files is the
caller's job (this module does no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuguardd.config import (
    TENANT_NAME,
    ConfigError,
    SloConfig,
    _build,
    _f,
    _required,
    check_model,
    slo_confidence_field,
    slo_window_field,
)
from gpuguardd.vgpu.gpus import GPUS


@dataclass(frozen=True)
class GpuEntry:
    model: str = _required("GPU model, e.g. 'A100-SXM4-80GB'")
    count: int = _f(1, "number of GPUs of this model", lo=1, hi=4096)


@dataclass(frozen=True, kw_only=True)
class AllocTenant:
    name: str = _required("tenant name, [a-z0-9_-]{1,63}")
    model: str | None = _f(None, "built-in model name (or the label of model_config)")
    model_config: str | None = _f(None, "path to a Hugging Face config.json (relative: to FILE)")
    slo: SloConfig = field(default_factory=SloConfig, metadata={"doc": "latency SLO"})
    demand_rps: float = _required("requests per second the tenant must sustain", lo=0.0)
    prompt_tokens: int = _f(1024, "typical prompt length, tokens", lo=1, hi=1_000_000)
    prompt_tokens_p99: int | None = _f(
        None, "99th percentile of the prompt length, tokens (default: prompt_tokens)",
        lo=1, hi=10_000_000)
    output_tokens: int = _f(128, "typical output length, tokens", lo=1, hi=1_000_000)
    static_share_pct: int | None = _f(None, "the operator's static share, for comparison",
                                      lo=1, hi=100)
    max_batch: int = _f(32, "most concurrent sequences the engine runs (max_num_seqs)",
                        lo=1, hi=256)
    input_bytes_per_request: float = _f(0.0, "extra host-to-device bytes per request", lo=0.0)


@dataclass(frozen=True)
class AllocInput:
    gpu: tuple[GpuEntry, ...] = field(default=(), metadata={"doc": "GPUs ([[gpu]] tables)"})
    tenants: tuple[AllocTenant, ...] = field(default=(), metadata={"doc": "tenants"})
    slo_window_s: float = slo_window_field()
    slo_confidence: float = slo_confidence_field()


def from_dict(data: Mapping[str, Any]) -> AllocInput:
    errors: list[str] = []
    inp = _build(AllocInput, data, "", errors)
    if inp is not None and not errors:
        _semantics(inp, errors)
    if errors:
        raise ConfigError(errors)
    assert isinstance(inp, AllocInput)
    return inp


def _semantics(inp: AllocInput, errors: list[str]) -> None:
    if not inp.gpu:
        errors.append("gpu: at least one [[gpu]] table is required")
    for i, g in enumerate(inp.gpu):
        if g.model not in GPUS:
            errors.append(f"gpu[{i}].model: unknown GPU {g.model!r}; "
                          f"known: {', '.join(sorted(GPUS))}")
    if not inp.tenants:
        errors.append("tenant: at least one [[tenant]] table is required")
    seen: set[str] = set()
    for i, t in enumerate(inp.tenants):
        p = f"tenant[{i}]"
        if not TENANT_NAME.match(t.name):
            errors.append(f"{p}.name: {t.name!r} must match [a-z0-9_-]{{1,63}}")
        if t.name in seen:
            errors.append(f"{p}.name: duplicate tenant name {t.name!r}")
        seen.add(t.name)
        check_model(p, t.model, t.model_config, t.prompt_tokens, t.prompt_tokens_p99, errors)
        if t.slo.ttft_p99_ms is None and t.slo.tpot_p99_ms is None:
            errors.append(f"{p}.slo: needs ttft_p99_ms or tpot_p99_ms")
