"""GPU models, their MIG profiles and the MIG state of one simulated GPU.

Facts (NVIDIA A100/H100 MIG user guide, data sheets): placements are start memory slices
(eighths of the GPU memory); an instance occupies ``[start, start + size)``. 1g any of 0-6
(size 1), 1g with double memory and 2g at 0/2/4(/6) (size 2), 3g at 0/4 (size 4), 4g at 0
(size 4), 7g at 0 (size 8). Profile create IDs (``nvmlGpuInstanceProfileInfo_t.id``) differ from
the query enums: 1g=19, 1g+me=20, 1g double memory=15, 2g=14, 3g=9, 4g=5, 7g=0.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.topology import MigInstance, MigProfile

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GpuModel:
    """Data-sheet facts of a GPU model.

    ``hbm_bps`` is the peak HBM bandwidth, ``bf16_flops`` the dense BF16 tensor peak; the
    *effective* rates LLM kernels reach come from the calibration table, as ratios to these.
    """

    name: str
    sm_count: int
    memory_bytes: int
    hbm_bps: float
    bf16_flops: float
    pcie_gen: int
    tdp_w: float
    idle_w: float
    #: GPM (per-MIG-instance SM/DRAM/PCIe activity) exists on Hopper and later only
    gpm: bool
    profiles: tuple[MigProfile, ...]

    def profile(self, name: str) -> MigProfile:
        for p in self.profiles:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.profiles)
        raise KeyError(f"{self.name} has no MIG profile {name!r} (known: {known})")


def _profiles(
    mem_gb_per_slice: int, sms: tuple[int, int, int, int, int], memory_bytes: int
) -> tuple[MigProfile, ...]:
    """The seven GI profiles of an A100/H100 with ``mem_gb_per_slice`` GB per memory slice.

    ``sms`` = SMs of (1g, 2g, 3g, 4g, 7g).
    """
    s = memory_bytes // 8
    g = mem_gb_per_slice
    one, two, three, four, seven = sms
    return (
        MigProfile(f"1g.{g}gb", 19, 1, 1, one, s, (0, 1, 2, 3, 4, 5, 6), 1),
        MigProfile(f"1g.{g}gb+me", 20, 1, 1, one, s, (0, 1, 2, 3, 4, 5, 6), 1),
        MigProfile(f"1g.{2 * g}gb", 15, 1, 2, one, 2 * s, (0, 2, 4, 6), 2),
        MigProfile(f"2g.{2 * g}gb", 14, 2, 2, two, 2 * s, (0, 2, 4), 2),
        MigProfile(f"3g.{4 * g}gb", 9, 3, 4, three, 4 * s, (0, 4), 4),
        MigProfile(f"4g.{4 * g}gb", 5, 4, 4, four, 4 * s, (0,), 4),
        MigProfile(f"7g.{8 * g}gb", 0, 7, 8, seven, 8 * s, (0,), 8),
    )


A100_40 = GpuModel(
    name="A100-SXM4-40GB", sm_count=108, memory_bytes=40 * GIB, hbm_bps=1.555e12,
    bf16_flops=312e12, pcie_gen=4, tdp_w=400.0, idle_w=55.0, gpm=False,
    profiles=_profiles(5, (14, 28, 42, 56, 98), 40 * GIB),
)
A100_80 = GpuModel(
    name="A100-SXM4-80GB", sm_count=108, memory_bytes=80 * GIB, hbm_bps=2.039e12,
    bf16_flops=312e12, pcie_gen=4, tdp_w=400.0, idle_w=60.0, gpm=False,
    profiles=_profiles(10, (14, 28, 42, 56, 98), 80 * GIB),
)
H100_80 = GpuModel(
    name="H100-SXM5-80GB", sm_count=132, memory_bytes=80 * GIB, hbm_bps=3.35e12,
    bf16_flops=989e12, pcie_gen=5, tdp_w=700.0, idle_w=70.0, gpm=True,
    profiles=_profiles(10, (16, 32, 60, 64, 132), 80 * GIB),
)

#: the PCIe card (300 W, 1.935 TB/s); same SMs and MIG profiles as the SXM4 80 GB part
A100_PCIE_80 = GpuModel(
    name="A100-PCIE-80GB", sm_count=108, memory_bytes=80 * GIB, hbm_bps=1.935e12,
    bf16_flops=312e12, pcie_gen=4, tdp_w=300.0, idle_w=50.0, gpm=False,
    profiles=_profiles(10, (14, 28, 42, 56, 98), 80 * GIB),
)

GPU_MODELS: dict[str, GpuModel] = {
    m.name: m for m in (A100_40, A100_80, A100_PCIE_80, H100_80)
}


def gpu_model(name: str) -> GpuModel:
    try:
        return GPU_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown GPU model {name!r}; known: {', '.join(GPU_MODELS)}") from None


def pcie_h2d_bps(gen: int, width: int = 16) -> float:
    """Effective host-to-device bandwidth of a PCIe link (≈ 12.5 / 25 / 50 GB/s at x16).

    Gen1/2 are not used by these GPUs but are given for completeness of NCCL XML input.
    """
    per_x16 = {1: 3.2e9, 2: 6.25e9, 3: 12.5e9, 4: 25e9, 5: 50e9, 6: 100e9}
    if gen not in per_x16:
        raise ValueError(f"unknown PCIe generation {gen}")
    if width <= 0:
        raise ValueError(f"PCIe width must be positive, got {width}")
    return per_x16[gen] * width / 16


class MigState:
    """MIG mode and GPU instances of one GPU: create only at valid free placements."""

    def __init__(self, gpu: int, model: GpuModel, enabled: bool) -> None:
        self.gpu = gpu
        self.model = model
        self.enabled = enabled
        self._instances: dict[int, MigInstance] = {}
        self._profile_of: dict[int, MigProfile] = {}  # gi_id -> its profile (hot path)

    @property
    def instances(self) -> tuple[MigInstance, ...]:
        return tuple(self._instances[k] for k in sorted(self._instances))

    def instance(self, gi_id: int) -> MigInstance | None:
        return self._instances.get(gi_id)

    def used_slices(self) -> set[int]:
        used: set[int] = set()
        for inst in self._instances.values():
            used.update(range(inst.start, inst.start + inst.size))
        return used

    def can_create(self, profile: str, start: int) -> str | None:
        """None when ``profile`` fits at ``start``; otherwise why not."""
        if not self.enabled:
            return f"GPU {self.gpu}: MIG mode is disabled"
        try:
            p = self.model.profile(profile)
        except KeyError as e:
            return str(e.args[0])
        if start not in p.placements:
            return (f"GPU {self.gpu}: {profile} cannot start at slice {start} "
                    f"(valid: {p.placements})")
        busy = self.used_slices() & set(range(start, start + p.size))
        if busy:
            return f"GPU {self.gpu}: slices {sorted(busy)} are occupied"
        if p.name.endswith("+me") and any(
            i.profile.endswith("+me") for i in self._instances.values()
        ):
            return f"GPU {self.gpu}: only one +me instance (media engines) per GPU"
        return None

    def create(self, profile: str, start: int) -> MigInstance:
        why = self.can_create(profile, start)
        if why is not None:
            # NVML_ERROR_INSUFFICIENT_RESOURCES / INVALID_ARGUMENT: retrying will not help
            raise LeverError(why, permanent=True)
        p = self.model.profile(profile)
        gi_id = next(i for i in range(1, 64) if i not in self._instances)
        inst = MigInstance(
            gpu=self.gpu, gi_id=gi_id, profile=p.name, start=start, size=p.size,
            uuid=f"MIG-sim-{self.gpu:02d}-{gi_id:02d}-{start}{p.size}",
        )
        self._instances[gi_id] = inst
        self._profile_of[gi_id] = p
        return inst

    def first_fit(self, profile: str) -> MigInstance:
        """Create ``profile`` at its lowest valid free placement (initial layouts)."""
        p = self.model.profile(profile)
        for start in p.placements:
            if self.can_create(profile, start) is None:
                return self.create(profile, start)
        raise LeverError(f"GPU {self.gpu}: no free placement for {profile}", permanent=True)

    def destroy(self, gi_id: int) -> MigInstance:
        inst = self._instances.pop(gi_id, None)
        self._profile_of.pop(gi_id, None)
        if inst is None:
            raise LeverError(f"GPU {self.gpu}: no GPU instance {gi_id}", permanent=True)
        return inst

    def sm_count(self, gi_id: int | None) -> int:
        if gi_id is None:
            return self.model.sm_count
        return self._profile_of[gi_id].sm_count

    def memory_slices(self, gi_id: int | None) -> int:
        if gi_id is None:
            return 8
        return self._profile_of[gi_id].memory_slices

    def memory_bytes(self, gi_id: int | None) -> int:
        if gi_id is None:
            return self.model.memory_bytes
        return self._profile_of[gi_id].memory_bytes
