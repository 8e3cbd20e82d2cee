"""An in-memory Host for executor and engine tests (the simulator covers physics)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.sketch import FrozenSketch
from gpuguardd.model.snapshot import (
    LatencyWindow,
    Placement,
    Snapshot,
    TenantClass,
    TenantSample,
)
from gpuguardd.model.topology import GpuInfo, MigInstance, Topology

TOPO = Topology(gpus=(GpuInfo(0, "GPU-0", "fake", "0000:01:00.0", 0, None, "pci0000:00", 4, 16,
                              80 << 30, 108),))


@dataclass
class FakeHost:
    limits: dict[tuple[str, str], IoLimit] = field(default_factory=dict)
    restarts: list[tuple[str, Placement | None, dict[str, str]]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    instances: dict[int, MigInstance] = field(default_factory=dict)
    in_use: set[int] = field(default_factory=set)
    fail_next: list[LeverError] = field(default_factory=list)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    busy: set[int] = field(default_factory=set)
    writes: int = 0
    closed: bool = False

    def topology(self) -> Topology:
        return TOPO

    def observe(self, now: float) -> Snapshot:
        tenants = {
            name: TenantSample(name, TenantClass.LATENCY, True, Placement(0),
                               LatencyWindow(ttft=FrozenSketch.of(xs)))
            for name, xs in self.ttft.items()
        }
        return Snapshot(now, TOPO, tenants=tenants, busy_gpus=frozenset(self.busy))

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def get_io_limit(self, tenant: str, device: str) -> IoLimit:
        self._maybe_fail()
        return self.limits.get((tenant, device), IoLimit())

    def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None:
        self._maybe_fail()
        self.writes += 1
        self.limits[(tenant, device)] = limit

    def restart_tenant(self, tenant: str, placement: Placement | None,
                       env: Mapping[str, str]) -> None:
        self._maybe_fail()
        self.restarts.append((tenant, placement, dict(env)))

    def stop_tenant(self, tenant: str) -> None:
        self.stopped.append(tenant)

    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        if gi_id in self.in_use:
            raise LeverError(f"gi {gi_id} in use")
        self.instances.pop(gi_id, None)

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance:
        gi = max(self.instances, default=0) + 1
        inst = MigInstance(gpu, gi, profile, start, 2, f"MIG-{gi}")
        self.instances[gi] = inst
        return inst

    def set_vgpu(self, tenant: str, compute_pct: int, memory_bytes: int) -> None:
        raise LeverError("no HAMi here", permanent=True)

    def close(self) -> None:
        self.closed = True
