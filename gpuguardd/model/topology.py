"""What a host is made of: GPUs, MIG instances, the PCIe tree, NUMA nodes, disks.

Built once by the host (real: sysfs + NVML; simulated: presets or NCCL XML) and rebuilt when
devices come and go. Rates are bytes per second, sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A GPU-instance profile as NVML reports it (e.g. ``1g.10gb``).

    ``placements`` are the valid start memory slices; an instance occupies
    ``[start, start + size)`` memory slices (eighths of the GPU memory).
    """

    name: str
    create_id: int
    compute_slices: int
    memory_slices: int
    sm_count: int
    memory_bytes: int
    placements: tuple[int, ...]
    size: int


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A GPU instance (with its one compute instance) on a MIG-enabled GPU."""

    gpu: int
    gi_id: int
    profile: str
    start: int
    size: int
    uuid: str


@dataclass(frozen=True, slots=True)
class PcieSwitch:
    """A PCIe switch (or a root port when ``parent`` is None) with its uplink capacity."""

    name: str
    parent: str | None
    numa_node: int
    gen: int
    width: int
    uplink_bps: float


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    numa_node: int
    switch: str | None
    root: str
    pcie_gen: int
    pcie_width: int
    memory_bytes: int
    sm_count: int
    mig_enabled: bool = False
    instances: tuple[MigInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockDevice:
    """A block device that tenants read from or write to (``major:minor`` as cgroups name it)."""

    name: str
    major: int
    minor: int
    numa_node: int = -1
    switch: str | None = None

    @property
    def devno(self) -> str:
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True, slots=True)
class NumaNode:
    node: int
    cpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    gpus: tuple[GpuInfo, ...] = ()
    switches: tuple[PcieSwitch, ...] = ()
    numa_nodes: tuple[NumaNode, ...] = ()
    block_devices: tuple[BlockDevice, ...] = ()
    nics: tuple[str, ...] = ()

    def gpu(self, index: int) -> GpuInfo:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(f"no GPU {index}")

    def switch(self, name: str) -> PcieSwitch | None:
        return next((s for s in self.switches if s.name == name), None)

    def share_switch(self, a: int, b: int) -> bool:
        """True when GPUs ``a`` and ``b`` sit behind the same PCIe switch (share its uplink)."""
        ga, gb = self.gpu(a), self.gpu(b)
        return ga.switch is not None and ga.switch == gb.switch

    def share_root(self, a: int, b: int) -> bool:
        return self.gpu(a).root == self.gpu(b).root

    def share_numa(self, a: int, b: int) -> bool:
        return self.gpu(a).numa_node == self.gpu(b).numa_node
