"""GPU constants the vGPU allocator needs: memory, dense BF16 peak, effective HBM and PCIe rates.

Values are vendor datasheet figures (peak) or commonly measured effective rates (HBM, PCIe);
they feed the memory check and the synthetic profiler, never the fitted predictors themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory_bytes: int
    peak_flops: float  # dense BF16/FP16 tensor FLOP/s
    hbm_bps: float  # effective device-memory bandwidth, bytes/s
    pcie_bps: float  # effective host-to-device bandwidth, bytes/s


GIB = 1 << 30

GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("A100-SXM4-80GB", 80 * GIB, 312e12, 1.8e12, 12.5e9),
        GpuSpec("A100-PCIE-80GB", 80 * GIB, 312e12, 1.7e12, 25e9),
        GpuSpec("A100-SXM4-40GB", 40 * GIB, 312e12, 1.4e12, 12.5e9),
        GpuSpec("H100-SXM5-80GB", 80 * GIB, 989e12, 3.0e12, 50e9),
        # Quadro RTX 6000 (Turing): 24 GB GDDR6, 672 GB/s peak, ~130 TFLOP/s FP16 tensor.
        GpuSpec("RTX6000", 24 * GIB, 130e12, 0.6e12, 12.5e9),
    )
}


class UnknownGpuError(ValueError):
    pass


def gpu_spec(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise UnknownGpuError(
            f"unknown GPU model {name!r}; known: {', '.join(sorted(GPUS))}") from None
