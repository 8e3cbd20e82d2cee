"""A synthetic profiler: physically grounded TTFT/TPOT rows for tests and benchmarks.

This is NOT ground truth for the predictor form. It stands in for real profiling (or the
simulator's CSV) and deliberately contains effects the predictor form does not: a
batch-dependent compute efficiency, a slice-quantum wait, a soft max between decode's memory and
compute time, power-law contention and per-co-runner scheduling delay, plus multiplicative
log-normal measurement noise from a seeded ``numpy`` Generator. A fit against these rows is
therefore a real test of the form.

Physics (times in seconds unless noted; f = share fraction under HAMi time slicing):

    prefill   F      = b · prefill_flops(P)                       (LlmArch)
              eff(n) = E · n / (n + 96),  n = b·P                  (small GEMMs are inefficient)
              t_pre  = F / (peak · eff) / f + (1 - f) · τ/2        (time slices, quantum τ = 4 ms)
                       · (1 + 0.3·u^1.4) + 0.4 ms · colocated + 3 ms + b·P·4 B / pcie
    decode    bytes  = weights + b · (P + O/2) · kv_bytes_per_token
              t_mem  = bytes / hbm;  t_cmp = 2 · params · b / (peak · 0.35)
              t_step = (t_mem⁴ + t_cmp⁴)^(1/4) / f · (1 + 0.4·d^1.3) + 2.3 ms + (1 - f) · 1 ms

E = 0.70 and the 2.3 ms host time per decode step are calibrated so that Llama-2-7B on a full
A100-80GB (312 TFLOP/s dense BF16, 1.8 TB/s effective HBM) gives ≈ 40 ms for a 512-token
prefill and ≈ 10 ms per output token at batch 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpuguardd.model.llm import LlmArch
from gpuguardd.vgpu.gpus import GpuSpec
from gpuguardd.vgpu.predictor import Predictor, fit
from gpuguardd.vgpu.profile_data import ProfileRow

PREFILL_EFFICIENCY = 0.70
EFFICIENCY_HALF_TOKENS = 96.0
SLICE_QUANTUM_S = 0.004
PREFILL_HOST_S = 0.003
DECODE_HOST_S = 0.0023
DECODE_COMPUTE_EFFICIENCY = 0.35
NOISE_SIGMA = 0.03


def prefill_s(
    arch: LlmArch, gpu: GpuSpec, batch: int, prompt_tokens: int, share: float,
    sm_others: float, colocated: int,
) -> float:
    n = batch * prompt_tokens
    eff = PREFILL_EFFICIENCY * n / (n + EFFICIENCY_HALF_TOKENS)
    compute = batch * arch.prefill_flops(prompt_tokens) / (gpu.peak_flops * eff)
    sliced = compute / share + (1.0 - share) * SLICE_QUANTUM_S / 2.0
    contention = 1.0 + 0.3 * sm_others**1.4
    pcie = n * 4.0 / gpu.pcie_bps
    return float(sliced * contention + 0.0004 * colocated + PREFILL_HOST_S + pcie)


def decode_step_s(
    arch: LlmArch, gpu: GpuSpec, batch: int, prompt_tokens: int, output_tokens: int,
    share: float, dram_others: float,
) -> float:
    ctx = prompt_tokens + output_tokens / 2.0
    t_mem = arch.decode_bytes(int(ctx), batch) / gpu.hbm_bps
    t_cmp = 2.0 * arch.params * batch / (gpu.peak_flops * DECODE_COMPUTE_EFFICIENCY)
    gpu_s = (t_mem**4 + t_cmp**4) ** 0.25
    return float(gpu_s / share * (1.0 + 0.4 * dram_others**1.3) + DECODE_HOST_S
                 + (1 - share) * 0.001)


@dataclass(frozen=True, slots=True)
class Sweep:
    batches: Sequence[int] = (1, 2, 4, 8, 16, 32)
    shares_pct: Sequence[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    prompt_tokens: Sequence[int] = (256, 512, 1024)
    output_tokens: int = 128
    colocated: Sequence[int] = (0, 1, 2, 3)
    repetitions: int = 1


def profile(
    arch: LlmArch, gpu: GpuSpec, rng: np.random.Generator, sweep: Sweep = Sweep(),
    noise_sigma: float = NOISE_SIGMA,
) -> list[ProfileRow]:
    """One row per sweep point and repetition. Co-runners' activities are drawn at random: each
    co-runner keeps the SMs busy U(0.05, 0.4) of the time and DRAM at U(0.5, 0.95) of that."""
    rows: list[ProfileRow] = []
    for k in sweep.colocated:
        for share in sweep.shares_pct:
            for b in sweep.batches:
                for p in sweep.prompt_tokens:
                    for _ in range(sweep.repetitions):
                        act = rng.uniform(0.05, 0.4, size=k)
                        u = float(act.sum())
                        d = float((act * rng.uniform(0.5, 0.95, size=k)).sum())
                        f = share / 100.0
                        ttft = prefill_s(arch, gpu, b, p, f, u, k)
                        tpot = decode_step_s(arch, gpu, b, p, sweep.output_tokens, f, d)
                        noise = np.exp(rng.normal(0.0, noise_sigma, size=2))
                        rows.append(ProfileRow(
                            model=arch.name, gpu=gpu.name, batch_size=b, share_pct=float(share),
                            colocated=k, sm_activity_others=round(u, 4),
                            dram_activity_others=round(d, 4),
                            ttft_ms=round(ttft * 1000.0 * float(noise[0]), 4),
                            tpot_ms=round(tpot * 1000.0 * float(noise[1]), 4),
                            prompt_tokens=p, output_tokens=sweep.output_tokens,
                        ))
    return rows


def fitted_predictor(arch: LlmArch, gpu: GpuSpec, seed: int = 0) -> Predictor:
    """A predictor fitted on this synthetic profile: the allocator's default when the operator
    has not profiled the model (``gpuguardd fit`` output replaces it)."""
    rows = profile(arch, gpu, np.random.default_rng(seed))
    return fit(rows, seed=seed, pcie_bps=gpu.pcie_bps)
