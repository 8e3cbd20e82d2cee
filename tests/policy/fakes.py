"""Small hand-built hosts for policy tests: a p4d-like topology and a toy interference model.

The toy model is deliberately simple and explicit (it is not the simulator): a latency tenant's
TTFT grows with the PCIe bytes other tenants push through its switch, and a batch tenant's disk
read rate is its demand clipped by its io.max cap. That is enough to check that the ladder closes
the loop (detects, blames the right neighbour, throttles, relaxes) without the simulator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from gpuguardd.config import Config, PolicyConfig, SloConfig, TenantConfig
from gpuguardd.model.actions import (
    Action,
    IoRelease,
    IoThrottle,
    Migrate,
    MpsLimit,
    Outcome,
    Result,
)
from gpuguardd.model.sketch import FrozenSketch
from gpuguardd.model.snapshot import (
    GpuSample,
    HostSignals,
    IoCounters,
    LatencyWindow,
    Placement,
    Snapshot,
    TenantClass,
    TenantSample,
)
from gpuguardd.model.topology import (
    BlockDevice,
    GpuInfo,
    MigInstance,
    NumaNode,
    PcieSwitch,
    Topology,
)

GiB = 1 << 30
NVME = "259:0"


def p4d(mig: dict[int, tuple[MigInstance, ...]] | None = None) -> Topology:
    """8 GPUs, 2 per Gen3 switch, switches 0-1 on NUMA 0 and 2-3 on NUMA 1, one NVMe on NUMA 0."""
    mig = mig or {}
    gpus = tuple(
        GpuInfo(
            index=i, uuid=f"GPU-{i}", name="A100-SXM4-40GB", pci_bus_id=f"0000:{i:02x}:00.0",
            numa_node=i // 4, switch=f"sw{i // 2}", root=f"root{i // 4}", pcie_gen=3,
            pcie_width=16, memory_bytes=40 * GiB, sm_count=108, mig_enabled=i in mig,
            instances=mig.get(i, ()),
        )
        for i in range(8)
    )
    switches = tuple(
        PcieSwitch(f"sw{s}", f"root{s // 2}", s // 2, 3, 16, 12.5e9) for s in range(4)
    )
    numa = (NumaNode(0, tuple(range(0, 48))), NumaNode(1, tuple(range(48, 96))))
    disks = (BlockDevice("nvme0n1", 259, 0, numa_node=0, switch=None),)
    return Topology(gpus=gpus, switches=switches, numa_nodes=numa, block_devices=disks)


def config(policy: str = "full", **knobs: float) -> Config:
    tenants = (
        TenantConfig(name="t1", tenant_class="latency", slo=SloConfig(ttft_p99_ms=15.0)),
        TenantConfig(name="t2", tenant_class="batch"),
        TenantConfig(name="t3", tenant_class="batch"),
        TenantConfig(name="t4", tenant_class="latency", slo=SloConfig(ttft_p99_ms=50.0)),
    )
    return Config(policy=PolicyConfig(name=policy, **knobs), tenants=tenants)  # type: ignore[arg-type]


def lat(values: list[float], ok: bool = True) -> LatencyWindow:
    return LatencyWindow(ttft=FrozenSketch.of(values), ok=ok)


@dataclass
class Toy:
    """t1 (latency, GPU 0), t2 (ETL reading NVMe into GPU ``t2_gpu``), t3 (batch, GPU 6).

    t1's TTFT samples are around ``base_s + slope_s_per_gbps x (PCIe GB/s of GPUs on its switch,
    other than its own)``; t2 streams ``t2_demand_bps`` from disk to its GPU, clipped by its cap.
    """

    t2_gpu: int = 1
    t2_demand_bps: float = 3e9
    t2_on: bool = True
    t3_read_bps: float = 2e9
    t4_gpu: int | None = None
    base_s: float = 0.010
    slope_s_per_gbps: float = 0.004
    rps: int = 50
    tick_s: float = 2.0
    cap_bps: float | None = None
    mps: dict[str, int] = field(default_factory=dict)
    io: dict[str, int] = field(default_factory=lambda: {"t2": 0, "t3": 0, "t4": 0})
    pcie: dict[int, int] = field(default_factory=lambda: dict.fromkeys(range(8), 0))
    topology: Topology = field(default_factory=p4d)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    ok: bool = True

    def t2_rate(self) -> float:
        if not self.t2_on:
            return 0.0
        return self.t2_demand_bps if self.cap_bps is None else min(self.t2_demand_bps, self.cap_bps)

    def observe(self, now: float) -> Snapshot:
        r2 = self.t2_rate()
        self.io["t2"] += int(r2 * self.tick_s)
        self.io["t3"] += int(self.t3_read_bps * self.tick_s)
        self.pcie[self.t2_gpu] += int(r2 * self.tick_s)
        self.pcie[6] += int(self.t3_read_bps * self.tick_s)
        self.pcie[0] += int(1e8 * self.tick_s)
        sw_load = sum(
            (self.pcie_rate(g, r2)) for g in range(8)
            if g != 0 and self.topology.share_switch(0, g)
        )
        mean = self.base_s + self.slope_s_per_gbps * sw_load / 1e9
        n = int(self.rps * self.tick_s)
        samples = [mean * (0.6 + 0.4 * self.rng.random()) for _ in range(n)]
        tenants = {
            "t1": TenantSample("t1", TenantClass.LATENCY, True, Placement(0),
                               latency=lat(samples, self.ok)),
            "t2": TenantSample("t2", TenantClass.BATCH, True, Placement(self.t2_gpu),
                               io=(IoCounters(NVME, rbytes=self.io["t2"]),), restartable=True,
                               mps_pct=self.mps.get("t2")),
            "t3": TenantSample("t3", TenantClass.BATCH, True, Placement(6),
                               io=(IoCounters(NVME, rbytes=self.io["t3"]),), restartable=True),
        }
        if self.t4_gpu is not None:
            self.io["t4"] += int(4e9 * self.tick_s)
            tenants["t4"] = TenantSample(
                "t4", TenantClass.LATENCY, True, Placement(self.t4_gpu),
                latency=lat([0.01] * 40), io=(IoCounters(NVME, rbytes=self.io["t4"]),))
        gpus = tuple(GpuSample(g, sm_util=0.3, mem_util=0.2, pcie_tx_bytes=0,
                               pcie_rx_bytes=self.pcie[g]) for g in range(8))
        return Snapshot(now=now, topology=self.topology, gpus=gpus, tenants=tenants,
                        host=HostSignals(irqs_per_cpu=dict.fromkeys(range(96), int(now * 100))))

    def pcie_rate(self, gpu: int, r2: float) -> float:
        return (r2 if gpu == self.t2_gpu else 0.0) + (self.t3_read_bps if gpu == 6 else 0.0)

    def apply(self, actions: tuple[Action, ...]) -> list[Outcome]:
        out = []
        for a in actions:
            if isinstance(a, IoThrottle) and a.tenant == "t2":
                self.cap_bps = a.limit.rbps
            elif isinstance(a, IoRelease) and a.tenant == "t2":
                self.cap_bps = None
            elif isinstance(a, Migrate) and a.tenant == "t2":
                self.t2_gpu = a.to.gpu
            elif isinstance(a, MpsLimit):
                if a.pct is None:
                    self.mps.pop(a.tenant, None)
                else:
                    self.mps[a.tenant] = a.pct
            out.append(Outcome(a, Result.APPLIED))
        return out


def with_tenant(snap: Snapshot, t: TenantSample) -> Snapshot:
    return replace(snap, tenants={**snap.tenants, t.name: t})
