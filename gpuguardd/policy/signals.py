"""Per-tick rates from the snapshot's cumulative counters, and their bounded history.

Counters are differenced against the previous tick; a counter that went backwards (a device
reset, a cgroup re-created) gives no rate for that tick rather than a negative or a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpuguardd.model.snapshot import Snapshot

IoKey = tuple[str, str]  # (tenant, device "MAJ:MIN")
InstKey = tuple[int, int]  # (gpu, gi_id)


@dataclass(frozen=True, slots=True)
class Counters:
    """The cumulative counters of the previous tick."""

    at: float
    io: Mapping[IoKey, tuple[int, int]] = field(default_factory=dict)  # (rbytes, wbytes)
    pcie: Mapping[int, int] = field(default_factory=dict)  # tx + rx bytes
    irqs: Mapping[int, int] = field(default_factory=dict)  # per CPU


@dataclass(frozen=True, slots=True)
class TickRates:
    """What one tick looked like, as rates (bytes/s, interrupts/s) and 0..1 activities."""

    at: float
    io_read_bps: Mapping[IoKey, float] = field(default_factory=dict)
    io_write_bps: Mapping[IoKey, float] = field(default_factory=dict)
    pcie_bps: Mapping[int, float] = field(default_factory=dict)
    sm: Mapping[int, float] = field(default_factory=dict)
    mem: Mapping[int, float] = field(default_factory=dict)
    inst_sm: Mapping[InstKey, float] = field(default_factory=dict)
    inst_dram: Mapping[InstKey, float] = field(default_factory=dict)
    inst_pcie_bps: Mapping[InstKey, float] = field(default_factory=dict)
    irq_numa: Mapping[int, float] = field(default_factory=dict)  # NUMA node -> irq/s
    #: protected tenant -> p99 / SLO of this tick's window (absent when unknown)
    ratio: Mapping[str, float] = field(default_factory=dict)

    def io_bps(self, key: IoKey) -> float:
        return self.io_read_bps.get(key, 0.0) + self.io_write_bps.get(key, 0.0)

    def tenant_io_bps(self, tenant: str) -> float:
        return sum(self.io_bps(k) for k in self.io_read_bps if k[0] == tenant)


def counters_of(snapshot: Snapshot) -> Counters:
    io: dict[IoKey, tuple[int, int]] = {}
    for t in snapshot.tenants.values():
        for c in t.io:
            io[(t.name, c.device)] = (c.rbytes, c.wbytes)
    pcie: dict[int, int] = {}
    for g in snapshot.gpus:
        if g.pcie_tx_bytes is not None and g.pcie_rx_bytes is not None:
            pcie[g.gpu] = g.pcie_tx_bytes + g.pcie_rx_bytes
    return Counters(snapshot.now, io, pcie, dict(snapshot.host.irqs_per_cpu))


def _delta(now: int, before: int | None, dt: float) -> float | None:
    if before is None or now < before:
        return None
    return (now - before) / dt


def rates_of(
    snapshot: Snapshot, prev: Counters | None, ratio: Mapping[str, float]
) -> TickRates:
    """This tick's rates; counter-based rates are empty on the first tick."""
    now = counters_of(snapshot)
    io_r: dict[IoKey, float] = {}
    io_w: dict[IoKey, float] = {}
    pcie: dict[int, float] = {}
    irq_numa: dict[int, float] = {}
    if prev is not None and snapshot.now > prev.at:
        dt = snapshot.now - prev.at
        for key, (rb, wb) in now.io.items():
            old = prev.io.get(key)
            r = _delta(rb, old[0] if old else None, dt)
            w = _delta(wb, old[1] if old else None, dt)
            if r is not None and w is not None:
                io_r[key], io_w[key] = r, w
        for gpu, b in now.pcie.items():
            d = _delta(b, prev.pcie.get(gpu), dt)
            if d is not None:
                pcie[gpu] = d
        for node in snapshot.topology.numa_nodes:
            total, seen = 0.0, False
            for cpu in node.cpus:
                if cpu in now.irqs:
                    d = _delta(now.irqs[cpu], prev.irqs.get(cpu), dt)
                    if d is not None:
                        total += d
                        seen = True
            if seen:
                irq_numa[node.node] = total
    sm = {g.gpu: g.sm_util for g in snapshot.gpus if g.sm_util is not None}
    mem = {g.gpu: g.mem_util for g in snapshot.gpus if g.mem_util is not None}
    inst_sm: dict[InstKey, float] = {}
    inst_dram: dict[InstKey, float] = {}
    inst_pcie: dict[InstKey, float] = {}
    for i in snapshot.instances:
        k = (i.gpu, i.gi_id)
        if i.sm_activity is not None:
            inst_sm[k] = i.sm_activity
        if i.dram_activity is not None:
            inst_dram[k] = i.dram_activity
        if i.pcie_rx_bps is not None and i.pcie_tx_bps is not None:
            inst_pcie[k] = i.pcie_rx_bps + i.pcie_tx_bps
    return TickRates(
        snapshot.now, io_r, io_w, pcie, sm, mem, inst_sm, inst_dram, inst_pcie, irq_numa,
        dict(ratio),
    )


def trim(history: tuple[TickRates, ...], now: float, horizon_s: float) -> tuple[TickRates, ...]:
    return tuple(h for h in history if now - horizon_s < h.at <= now)
