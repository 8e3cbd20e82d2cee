"""One tick's observations, exactly as real hardware and software expose them.

Counters are cumulative (the consumer differences them); ``None`` means *not supported or not
available this tick* and is never replaced by 0 or NaN. Nothing here says who slows whom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gpuguardd.model.sketch import FrozenSketch
from gpuguardd.model.topology import Topology


class TenantClass(StrEnum):
    LATENCY = "latency"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a tenant runs: a whole GPU (``gi_id`` None) or one MIG GPU instance."""

    gpu: int
    gi_id: int | None = None

    def __str__(self) -> str:
        return f"gpu{self.gpu}" if self.gi_id is None else f"gpu{self.gpu}/gi{self.gi_id}"


@dataclass(frozen=True, slots=True)
class GpuSample:
    """NVML-level counters of one physical GPU.

    ``sm_util``/``mem_util`` are 0..1 (nvmlDeviceGetUtilizationRates over its sample period).
    ``pcie_tx_bytes``/``pcie_rx_bytes`` are cumulative (NVML field values 197/198); tx = device
    to host, rx = host to device, from the GPU's point of view as NVML defines it.
    """

    gpu: int
    sm_util: float | None = None
    mem_util: float | None = None
    pcie_tx_bytes: int | None = None
    pcie_rx_bytes: int | None = None
    pcie_replays: int | None = None
    power_w: float | None = None
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class InstanceSample:
    """Per-MIG-instance activity, only where GPM exists (Hopper and later). Rates 0..1 / B/s."""

    gpu: int
    gi_id: int
    sm_activity: float | None = None
    dram_activity: float | None = None
    pcie_tx_bps: float | None = None
    pcie_rx_bps: float | None = None


@dataclass(frozen=True, slots=True)
class IoCounters:
    """Cumulative block-I/O of one cgroup on one device (io.stat / blkio.throttle.io_service*)."""

    device: str  # "MAJ:MIN"
    rbytes: int = 0
    wbytes: int = 0
    rios: int = 0
    wios: int = 0


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    """Latency samples (or histogram deltas) a tenant's source delivered since the last tick.

    ``ok`` is False when the source failed this tick: the window is unknown, not empty.
    """

    ttft: FrozenSketch = FrozenSketch()
    tpot: FrozenSketch = FrozenSketch()
    ok: bool = True

    def missed(self, ttft_slo_s: float | None, tpot_slo_s: float | None) -> int:
        """Requests over an SLO (the larger count of TTFT and TPOT samples above theirs)."""
        return max(self.ttft.count_above(ttft_slo_s) if ttft_slo_s else 0,
                   self.tpot.count_above(tpot_slo_s) if tpot_slo_s else 0)

    @property
    def requests(self) -> int:
        return max(self.ttft.count, self.tpot.count)


@dataclass(frozen=True, slots=True)
class TenantSample:
    name: str
    tenant_class: TenantClass
    running: bool
    placement: Placement | None
    latency: LatencyWindow = LatencyWindow()
    io: tuple[IoCounters, ...] = ()
    restartable: bool = False
    mps_pct: int | None = None
    share_pct: int | None = None
    #: completed work, cumulative, in the tenant's natural unit when the host can see it
    #: (requests for inference tenants with a latency source); None when unknown.
    work_done: float | None = None


@dataclass(frozen=True, slots=True)
class HostSignals:
    """Host-side signals: interrupts per CPU (cumulative), per-device disk counters."""

    irqs_per_cpu: Mapping[int, int] = field(default_factory=dict)
    disk_bytes: Mapping[str, int] = field(default_factory=dict)  # devno -> cumulative bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    topology: Topology
    gpus: tuple[GpuSample, ...] = ()
    instances: tuple[InstanceSample, ...] = ()
    tenants: Mapping[str, TenantSample] = field(default_factory=dict)
    host: HostSignals = HostSignals()
    #: busy placements with a reconfiguration in progress (MIG) - no new disruptive action there
    busy_gpus: frozenset[int] = frozenset()

    def gpu(self, index: int) -> GpuSample | None:
        return next((g for g in self.gpus if g.gpu == index), None)
