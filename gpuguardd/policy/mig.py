"""MIG geometry and the resize planner (pure).

A100/H100 MIG: 8 memory slices and 7 compute slices per GPU. A GPU-instance profile is
``<c>g.<mem>gb``; it occupies ``size`` memory slices starting at one of its valid placements:

    1g (1 slice)   starts 0..6        1g double memory (2 slices)  0, 2, 4, 6
    2g (2 slices)  starts 0, 2, 4     3g (4 slices)                0, 4
    4g (4 slices)  start 0            7g (8 slices)                0

The memory per slice is read from the GPU's own profile names (``1g.10gb`` -> 10 GB per slice),
or from its memory size, so the same table serves A100-40GB, A100-80GB and H100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpuguardd.model.topology import GpuInfo, MigInstance

MEMORY_SLICES = 8
COMPUTE_SLICES = 7

#: (compute slices, memory slices) -> valid start slices
SHAPES: dict[tuple[int, int], tuple[int, ...]] = {
    (1, 1): (0, 1, 2, 3, 4, 5, 6),
    (1, 2): (0, 2, 4, 6),
    (2, 2): (0, 2, 4),
    (3, 4): (0, 4),
    (4, 4): (0,),
    (7, 8): (0,),
}
#: the growth path of a GPU instance: the next larger standard shape for more SMs
GROWTH: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 4), (4, 4), (7, 8))

_NAME = re.compile(r"^(\d+)g\.(\d+)gb")


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    compute: int
    size: int  # memory slices
    starts: tuple[int, ...]


def gb_per_slice(gpu: GpuInfo) -> int:
    """Memory per slice in the profile names' GB unit."""
    for inst in gpu.instances:
        m = _NAME.match(inst.profile)
        if m and inst.size > 0:
            return max(1, int(m.group(2)) // inst.size)
    return max(1, round(gpu.memory_bytes / MEMORY_SLICES / (1 << 30)))


def compute_of(profile: str) -> int | None:
    m = _NAME.match(profile)
    return int(m.group(1)) if m else None


def shape(gpu: GpuInfo, compute: int, size: int) -> Shape:
    return Shape(f"{compute}g.{size * gb_per_slice(gpu)}gb", compute, size,
                 SHAPES.get((compute, size), ()))


def used_compute(gpu: GpuInfo, exclude: int | None = None) -> int:
    total = 0
    for i in gpu.instances:
        if i.gi_id != exclude:
            total += compute_of(i.profile) or i.size
    return total


def overlapping(gpu: GpuInfo, start: int, size: int, exclude: int | None) -> list[MigInstance]:
    return [
        i for i in gpu.instances
        if i.gi_id != exclude and i.start < start + size and start < i.start + i.size
    ]


@dataclass(frozen=True, slots=True)
class Growth:
    """A valid larger placement for instance ``inst``: ``to`` at ``start``."""

    inst: MigInstance
    to: Shape
    start: int

    @property
    def keeps_slices(self) -> bool:
        return self.start <= self.inst.start and self.inst.start + self.inst.size <= (
            self.start + self.to.size
        )


def growths(gpu: GpuInfo, inst: MigInstance) -> list[Growth]:
    """Every larger standard profile that fits once ``inst`` itself is destroyed, smallest
    first; at equal size, placements that contain the current slices come first (the new
    instance reuses them) and then the lowest start (keeps the high slices free for others)."""
    c = compute_of(inst.profile) or inst.size
    out: list[Growth] = []
    for comp, size in GROWTH:
        if comp <= c or size < inst.size:
            continue
        if used_compute(gpu, exclude=inst.gi_id) + comp > COMPUTE_SLICES:
            continue
        sh = shape(gpu, comp, size)
        for start in sh.starts:
            if start + size > MEMORY_SLICES:
                continue
            if not overlapping(gpu, start, size, exclude=inst.gi_id):
                out.append(Growth(inst, sh, start))
        if out:
            break  # one step at a time: the smallest profile that gives more SMs
    out.sort(key=lambda g: (not g.keeps_slices, g.start))
    return out


def free_slices(gpu: GpuInfo) -> int:
    taken = {s for i in gpu.instances for s in range(i.start, i.start + i.size)}
    return MEMORY_SLICES - len(taken)
