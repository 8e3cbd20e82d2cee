"""A synthetic profiler: physically grounded TTFT/TPOT rows for tests and benchmarks.

This is NOT ground truth for the predictor form. It stands in for real profiling (or the
simulator's CSV) and contains effects the predictor form does not: a soft max between decode's
memory and compute time, a per-layer cost that does not scale with the share, a per-co-runner
scheduling delay and, when its ``Calibration`` asks for them, a batch-dependent compute
efficiency, a slice-quantum wait and power-law contention; plus multiplicative log-normal
measurement noise from a seeded ``numpy`` Generator. A fit against these rows is therefore a
real test of the form.

Physics (times in seconds unless noted; f = share fraction under HAMi time slicing; L = the
model's layers, t_L the per-layer cost of one iteration: launches, norms, sampling):

    prefill   F      = b · prefill_flops(P)                       (LlmArch)
              eff(n) = E · n / (n + n½),  n = b·P                  (n½ = 0: no small-GEMM loss)
              t_pre  = F / (peak · eff) / f + (1 - f) · τ/2        (time slices, quantum τ)
                       · (1 + c_sm·u^1.4) + 0.4 ms · colocated + L·t_L + b·P·4 B / pcie
    decode    bytes  = weights + b · (P + O/2) · kv_bytes_per_token
              t_mem  = bytes / (hbm · η);  t_cmp = 2 · params · b / (peak · 0.35)
              t_step = (t_mem⁴ + t_cmp⁴)^(1/4) / f · (1 + c_dram·d^1.3) + L·t_L + (1 - f) · τ/4

The default constants are the simulator's (``gpuguardd/sim/data/calibration.toml``, derived from
splitwise's measured A100-SXM4-80GB timings; ``tests/vgpu/test_synthetic.py`` keeps the two equal):
E = 0.58 (180.9 of 312 TFLOP/s dense BF16), η = 0.6926 (1.2466 TB/s of the 1.8 TB/s in
``GpuSpec``), t_L = 8 µs and no slice quantum. Llama-2-7B on a full A100-80GB then gives
≈ 38 ms for a 512-token prefill and ≈ 11.3 ms per output token at batch 1 and a 512-token context.

Under HAMi time slicing everything a decode step does on the GPU - streaming the weights and the
KV cache - happens inside the tenant's slices, so the whole of t_mem scales like 1/f; only the
per-layer launch cost does not. An earlier default (η = 1, a fixed 2.3 ms of host time per step
that did not scale with f) matched the same ≈ 10 ms at f = 1 but made decode at f ≈ 0.25 about
20 % faster than the simulator's, and the plans built on it missed TPOT SLOs there.

Co-runners. Without MPS, HAMi time-slices the contexts of different processes: a co-runner's
kernels never run while the tenant's do, so they take none of its SM time or HBM bandwidth
beyond what the shares already divide (the simulator's ``SimHost.hbm_fraction`` /
``sm_fraction``). The default contention coefficients c_sm, c_dram are therefore 0 and only the
per-co-runner scheduling delay (0.4 ms per prefill) remains; profiles of MPS-shared GPUs, where
kernels do overlap, would set c_sm = 0.3 and c_dram = 0.4 (the earlier defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpuguardd.model.llm import LlmArch
from gpuguardd.vgpu.fitting import fit
from gpuguardd.vgpu.gpus import GpuSpec
from gpuguardd.vgpu.predictor import Predictor
from gpuguardd.vgpu.profile_data import ProfileRow

NOISE_SIGMA = 0.03


@dataclass(frozen=True, slots=True)
class Calibration:
    """Constants of the formulas above. The default is the simulator's calibration (see the
    module docstring); tests and benchmarks may pass another one."""

    prefill_efficiency: float = 1.8086e14 / 312e12  # E: sustained fraction of peak FLOP/s
    efficiency_half_tokens: float = 0.0  # n½ (0: none)
    slice_quantum_s: float = 0.0  # τ
    prefill_host_s: float = 0.0  # fixed host time per prefill, on top of the per-layer cost
    decode_host_s: float = 0.0  # fixed host time per decode step, on top of the per-layer cost
    decode_compute_efficiency: float = 0.35
    contention_sm: float = 0.0  # prefill x (1 + c·u^1.4); 0: time slicing (see above)
    contention_dram: float = 0.0  # decode x (1 + c·d^1.3); 0: time slicing
    corunner_delay_s: float = 0.0004
    hbm_efficiency: float = 1.2466e12 / 1.8e12  # η: sustained fraction of GpuSpec.hbm_bps
    layer_s: float = 8.0e-6  # t_L

DEFAULT = Calibration()
# co-runners' kernels overlapping the tenant's (MPS): they contend for SMs and HBM bandwidth
MPS = Calibration(contention_sm=0.3, contention_dram=0.4)


def prefill_s(
    arch: LlmArch, gpu: GpuSpec, batch: int, prompt_tokens: int, share: float,
    sm_others: float, colocated: int, cal: Calibration = DEFAULT,
) -> float:
    n = batch * prompt_tokens
    eff = cal.prefill_efficiency * n / (n + cal.efficiency_half_tokens)
    compute = batch * arch.prefill_flops(prompt_tokens) / (gpu.peak_flops * eff)
    sliced = compute / share + (1.0 - share) * cal.slice_quantum_s / 2.0
    contention = 1.0 + cal.contention_sm * sm_others**1.4
    pcie = n * 4.0 / gpu.pcie_bps
    host = cal.prefill_host_s + arch.num_layers * cal.layer_s
    return float(sliced * contention + cal.corunner_delay_s * colocated + host + pcie)


def decode_step_s(
    arch: LlmArch, gpu: GpuSpec, batch: int, prompt_tokens: int, output_tokens: int,
    share: float, dram_others: float, cal: Calibration = DEFAULT,
) -> float:
    ctx = prompt_tokens + output_tokens / 2.0
    t_mem = arch.decode_bytes(int(ctx), batch) / (gpu.hbm_bps * cal.hbm_efficiency)
    t_cmp = 2.0 * arch.params * batch / (gpu.peak_flops * cal.decode_compute_efficiency)
    gpu_s = (t_mem**4 + t_cmp**4) ** 0.25
    return float(gpu_s / share * (1.0 + cal.contention_dram * dram_others**1.3)
                 + cal.decode_host_s + arch.num_layers * cal.layer_s
                 + (1 - share) * cal.slice_quantum_s / 4.0)


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
    noise_sigma: float = NOISE_SIGMA, cal: Calibration = DEFAULT,
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
                        ttft = prefill_s(arch, gpu, b, p, f, u, k, cal)
                        tpot = decode_step_s(arch, gpu, b, p, sweep.output_tokens, f, d, cal)
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


def fitted_predictor(
    arch: LlmArch, gpu: GpuSpec, seed: int = 0, cal: Calibration = DEFAULT
) -> Predictor:
    """A predictor fitted on this synthetic profile: the allocator's default when the operator
    has not profiled the model (``gpuguardd fit`` output replaces it)."""
    rows = profile(arch, gpu, np.random.default_rng(seed), cal=cal)
    return fit(rows, seed=seed, pcie_bps=gpu.pcie_bps)
