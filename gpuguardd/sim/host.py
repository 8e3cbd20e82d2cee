"""SimHost: the simulated GPU host behind the same Host protocol as the real one.

Virtual time advances only in :meth:`SimHost.observe`. Levers act at the time of the last
observation (the engine calls them right after observing). What the controller sees is what
real hardware shows - NVML-like GPU counters (none per MIG instance on A100, GPM on Hopper),
cumulative PCIe bytes, per-cgroup block-I/O counters, latency samples, IRQ counts - with
measurement noise. Ground truth (per-tenant results, timelines) is only in :meth:`results` and
:meth:`timeline`, for the evaluation layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.sketch import ALPHA, MAX_BUCKETS, MIN_VALUE, FrozenSketch
from gpuguardd.model.snapshot import (
    GpuSample,
    HostSignals,
    InstanceSample,
    IoCounters,
    LatencyWindow,
    Placement,
    Snapshot,
    TenantClass,
    TenantSample,
)
from gpuguardd.model.topology import MigInstance, Topology
from gpuguardd.sim import calibration
from gpuguardd.sim.calibration import GpuCalibration
from gpuguardd.sim.events import EventLoop
from gpuguardd.sim.fabric import INF, Flow, FluidDomain, max_min
from gpuguardd.sim.hardware import GpuModel, MigState, gpu_model
from gpuguardd.sim.topology import HostSpec
from gpuguardd.sim.workloads import Etl, Inference, Tenant, TenantSpec, Training

#: extra host-side (tokenisation, scheduling) delay per GB/s of block I/O on the tenant's NUMA
#: node, seconds: page-cache copies and I/O interrupts take the cores the server threads use
HOST_DELAY_S_PER_GBPS = 0.1e-3
#: timer interrupts per CPU per second (CONFIG_HZ=250)
TIMER_HZ = 250.0
#: CPUs of a NUMA node that take the NVMe completion interrupts (one queue each)
IRQ_CPUS_PER_DISK = 4

MPS_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"

_LOG_GAMMA = float(np.log((1 + ALPHA) / (1 - ALPHA)))


def _sketch(xs: list[float]) -> FrozenSketch:
    """``FrozenSketch.of(xs)`` computed with numpy (the same bucket keys, ceil(log_gamma x)):
    a tick's window holds up to thousands of samples per tenant."""
    if len(xs) < 32:
        return FrozenSketch.of(xs)
    a = np.asarray(xs, dtype=np.float64)
    a = a[np.isfinite(a) & (a >= 0)]
    keys = np.ceil(np.log(np.maximum(a, MIN_VALUE)) / _LOG_GAMMA).astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    if uniq.size > MAX_BUCKETS:
        return FrozenSketch.of(xs)
    items = tuple(zip(uniq.tolist(), counts.tolist(), strict=True))
    return FrozenSketch(items, int(a.size), float(a.sum()))


@dataclass(frozen=True, slots=True)
class EventSpec:
    at_s: float
    tenant: str
    action: str  # start | stop | set
    values: Mapping[str, object] | None = None


@dataclass(slots=True)
class _Pending:
    up_at: float
    placement: Placement
    mps_pct: int | None
    token: int


class SimHost:
    """The simulated host. Build it with :meth:`Scenario.build_host`."""

    def __init__(
        self,
        spec: HostSpec,
        tenants: Sequence[TenantSpec],
        *,
        mig_layout: Mapping[int, Sequence[str]] | None = None,
        events: Sequence[EventSpec] = (),
        seed: int = 1,
        restart_s: float = 20.0,
        reconfig_s: float = 18.0,
        apply_set: Callable[[TenantSpec, Mapping[str, object]], TenantSpec] | None = None,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.restart_s = restart_s
        self.reconfig_s = reconfig_s
        self.loop = EventLoop()
        cal = calibration.load()
        self._cal = cal
        self.layer_overhead_s = cal.layer_overhead_s
        self._apply_set = apply_set
        self.models: dict[int, GpuModel] = {
            g.index: gpu_model(spec.gpu_models[g.index]) for g in spec.topology.gpus
        }
        layout = dict(mig_layout or {})
        self.mig: dict[int, MigState] = {}
        self._layout_ids: dict[int, list[int]] = {}
        for g in spec.topology.gpus:
            ms = MigState(g.index, self.models[g.index], enabled=g.index in layout)
            self._layout_ids[g.index] = [ms.first_fit(p).gi_id for p in layout.get(g.index, ())]
            self.mig[g.index] = ms
        self.reconfig_until: dict[int, float] = {g: -INF for g in self.mig}
        self.mig_reconfigs = 0
        self._closed = False
        self._build_fabric()
        seq = np.random.SeedSequence(seed)
        kids = seq.spawn(len(tenants) + 1)
        self._noise = np.random.default_rng(kids[0])
        self._gpu_numa = {g.index: g.numa_node for g in spec.topology.gpus}
        self.tenants: dict[str, Tenant] = {}
        for ts, kid in zip(tenants, kids[1:], strict=True):
            self.tenants[ts.name] = self._make_tenant(ts, np.random.default_rng(kid))
        self._order = list(self.tenants.values())
        self._pending: dict[str, _Pending] = {}
        self._members_cache: dict[Placement, list[Tenant]] = {}
        self._token = 0
        # cumulative observable counters, kept noisy but monotone
        self._obs_t = 0.0
        self._rx_seen: dict[int, float] = {g: 0.0 for g in self.mig}
        self._rx_noisy: dict[int, float] = {g: 0.0 for g in self.mig}
        self._acct_seen: dict[int, float] = {}
        self._busy: dict[tuple[int, int | None], list[float]] = {}
        self._busy_seen: dict[tuple[int, int | None], list[float]] = {}
        for ev in sorted(events, key=lambda e: e.at_s):
            if ev.at_s <= 0:
                self._event(0.0, ev, starting=True)
            else:
                self.loop.schedule(ev.at_s, lambda t, e=ev: self._event(t, e))  # type: ignore[misc]
        for ten in self._order:
            if ten.active:
                ten.begin(0.0)

    # -- construction -------------------------------------------------------------------------
    def _build_fabric(self) -> None:
        """One fluid domain per top-level PCIe subtree, one per block device."""
        self._pcie: dict[int, tuple[FluidDomain, tuple[int, ...]]] = {}
        domains: dict[str, tuple[FluidDomain, dict[str, int]]] = {}
        for g in self.spec.topology.gpus:
            chain = self.spec.switch_chain(g.index)
            key = chain[-1].name if chain else f"gpu{g.index}"
            if key not in domains:
                domains[key] = (FluidDomain([], self.loop.schedule), {})
            dom, links = domains[key]

            def link(name: str, cap: float, dom: FluidDomain = dom,
                     links: dict[str, int] = links) -> int:
                if name not in links:
                    links[name] = len(dom.capacities)
                    dom.capacities.append(cap)
                return links[name]

            path = (link(f"gpu{g.index}", self.spec.link_bps(g.index)),
                    *(link(f"sw:{s.name}", s.uplink_bps) for s in chain))
            self._pcie[g.index] = (dom, path)
        self.pcie_domains = [d for d, _ in domains.values()]
        self._disks: dict[str, FluidDomain] = {
            d.devno: FluidDomain([self.spec.disk_read_bps.get(d.devno, 2.0e9)],
                                 self.loop.schedule)
            for d in self.spec.topology.block_devices
        }
        self._disk_numa = {d.devno: d.numa_node for d in self.spec.topology.block_devices}
        self._numa_disks: dict[int, list[FluidDomain]] = {}
        for dev, dom in self._disks.items():
            self._numa_disks.setdefault(self._disk_numa[dev], []).append(dom)

    def _make_tenant(self, ts: TenantSpec, rng: np.random.Generator) -> Tenant:
        place = self.initial_placement(ts)
        if ts.kind == "inference":
            ten: Tenant = Inference(ts, place, self, rng)
        elif ts.kind == "etl":
            ten = Etl(ts, place, self, rng, self.resolve_device(ts))
        elif ts.kind == "training":
            ten = Training(ts, place, self, rng)
        else:
            raise ValueError(f"tenant {ts.name}: unknown kind {ts.kind!r}")
        why = self._fit_problem(ten, place)
        if why is not None:
            raise ValueError(f"tenant {ts.name}: {why}")
        return ten

    def initial_placement(self, ts: TenantSpec) -> Placement:
        if ts.gpu not in self.mig:
            raise ValueError(f"tenant {ts.name}: no GPU {ts.gpu}")
        ms = self.mig[ts.gpu]
        if ms.enabled:
            ids = self._layout_ids[ts.gpu]
            idx = ts.instance if ts.instance is not None else 0
            if not 0 <= idx < len(ids):
                raise ValueError(f"tenant {ts.name}: GPU {ts.gpu} has no MIG instance {idx}")
            return Placement(ts.gpu, ids[idx])
        if ts.instance is not None:
            raise ValueError(f"tenant {ts.name}: GPU {ts.gpu} is not in MIG mode")
        return Placement(ts.gpu)

    def resolve_device(self, ts: TenantSpec) -> str:
        disks = self.spec.topology.block_devices
        if ts.device is not None:
            for d in disks:
                if ts.device in (d.devno, d.name):
                    return d.devno
            raise ValueError(f"tenant {ts.name}: no block device {ts.device!r}")
        numa = self.spec.topology.gpu(ts.gpu).numa_node
        local = [d for d in disks if d.numa_node == numa] or list(disks)
        if not local:
            raise ValueError(f"tenant {ts.name}: the host has no block device")
        return local[0].devno

    # -- Env (what tenants may ask) -----------------------------------------------------------
    def _acct(self, p: Placement) -> int:
        return p.gpu * 1000 + (p.gi_id if p.gi_id is not None else 999)

    def pcie_flow(self, tenant: Tenant, nbytes: float, weight: float,
                  on_done: Callable[[float], None]) -> Flow:
        dom, path = self._pcie[tenant.placement.gpu]
        flow = Flow(path, nbytes, weight, INF, on_done, self._acct(tenant.placement))
        return dom.add(self.loop.now, flow)

    def cancel_flow(self, flow: Flow) -> None:
        if flow.domain is not None:
            flow.domain.remove(self.loop.now, flow)

    def disk_flow(self, tenant: Tenant, device: str, nbytes: float, cap: float,
                  on_done: Callable[[float], None]) -> Flow:
        return self._disks[device].add(self.loop.now, Flow((0,), nbytes, 1.0, cap, on_done))

    def set_flow_cap(self, flow: Flow, cap: float) -> None:
        if flow.domain is not None:
            flow.domain.set_cap(self.loop.now, flow, cap)

    def _members(self, p: Placement) -> list[Tenant]:
        """Working tenants on the SM pool ``p`` (cached until a tenant changes state)."""
        got = self._members_cache.get(p)
        if got is None:
            got = [x for x in self._order if x.working and x.uses_sm and x.placement == p]
            self._members_cache[p] = got
        return list(got)

    def _changed(self) -> None:
        self._members_cache.clear()

    def _cap_pct(self, x: Tenant) -> float:
        pcts = [v for v in (x.mps_pct, x.share_pct) if v is not None]
        return min(pcts) / 100.0 if pcts else 1.0

    @staticmethod
    def _share_cap(x: Tenant) -> float:
        return x.share_pct / 100.0 if x.share_pct is not None else 1.0

    def sm_fraction(self, tenant: Tenant) -> float:
        """SMs the tenant gets while it computes, as a fraction of its whole GPU.

        Co-runners on the same SM pool (a non-MIG GPU, or one instance, shared by MPS or time
        slicing) share it by weight, capped by MPS active-thread % or HAMi share %. A co-running
        inference server counts with its mean prefill-busy fraction rho (it computes in bursts).
        """
        p = tenant.placement
        ms = self.mig[p.gpu]
        pool = float(ms.sm_count(p.gi_id))
        members = self._members(p)
        if tenant not in members:
            members.append(tenant)
        if len(members) == 1:
            return pool * self._cap_pct(tenant) / ms.model.sm_count
        weights = [x.spec.sm_weight * (1.0 if x is tenant or x.kind != "inference" else x.rho)
                   for x in members]
        caps = [pool * self._cap_pct(x) for x in members]
        rates = max_min([(0,)] * len(members), [pool], weights, caps)
        return rates[members.index(tenant)] / ms.model.sm_count

    def hbm_fraction(self, tenant: Tenant) -> float:
        """HBM bandwidth share: a MIG instance owns memory_slices/8 of it; co-runners in one
        pool share it max-min, a training job capped at its own demand.

        A HAMi share also caps it. Without MPS the contexts of different processes never run
        at the same time: the GPU time-slices them, and HAMi-core's ``sm_limit`` throttles a
        tenant's kernel launches to its share of that time. A decode step streams weights and
        KV only from inside the tenant's kernels, so the fraction of time it can stream HBM -
        and hence its average bandwidth - is bounded by the same share (alone on the GPU
        included: the idle slices are not handed to it). MPS limits threads, not time, and
        does not cap bandwidth this way."""
        p = tenant.placement
        ms = self.mig[p.gpu]
        pool = ms.memory_slices(p.gi_id) / 8.0
        members = self._members(p)
        if tenant not in members:
            members.append(tenant)
        if len(members) == 1:
            return max(pool * self._share_cap(tenant), 1e-6)
        weights: list[float] = []
        caps: list[float] = []
        for x in members:
            if isinstance(x, Training):
                weights.append(1.0)
                caps.append(min(x.spec.hbm_fraction, self._share_cap(x)) * pool)
            else:
                busy = x is tenant or (isinstance(x, Inference) and bool(x.decodes))
                weights.append(1.0 if busy else 0.0)
                caps.append(pool * self._share_cap(x) if x.share_pct is not None else INF)
        rates = max_min([(0,)] * len(members), [pool], weights, caps)
        return max(rates[members.index(tenant)], 1e-6)

    def _numa_io_bps(self, node: int) -> float:
        total = 0.0
        for dom in self._numa_disks.get(node, ()):
            for f in dom.flows:
                total += f.rate
        return total

    def host_delay(self, tenant: Tenant) -> tuple[float, float]:
        """Tokenisation and scheduling: ``host_delay_ms`` plus an exponential tail whose mean
        (a third of the base) grows with the block I/O on the tenant's NUMA node."""
        base = tenant.spec.host_delay_ms / 1e3
        node = self._gpu_numa[tenant.placement.gpu]
        extra = HOST_DELAY_S_PER_GBPS * self._numa_io_bps(node) / 1e9
        return base, base / 3 + extra

    def placement_memory_bytes(self, tenant: Tenant) -> int:
        p = tenant.placement
        return self.mig[p.gpu].memory_bytes(p.gi_id)

    def calibration(self, tenant: Tenant) -> GpuCalibration:
        return self._cal.gpu(self.models[tenant.placement.gpu].name)

    def note_busy(self, tenant: Tenant, seconds: float, sm_fraction: float,
                  hbm_bytes: float) -> None:
        key = (tenant.placement.gpu, tenant.placement.gi_id)
        acc = self._busy.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += seconds
        acc[1] += seconds * sm_fraction
        acc[2] += hbm_bytes

    # -- scenario events ----------------------------------------------------------------------
    def _event(self, t: float, ev: EventSpec, starting: bool = False) -> None:
        self._changed()
        ten = self.tenants[ev.tenant]
        if ev.action == "set":
            if self._apply_set is None or ev.values is None:
                return
            spec = self._apply_set(ten.spec, ev.values)
            ten.apply_spec(t, spec)
            return
        active = ev.action == "start"
        if starting:
            ten.active = active  # before anything begins at t = 0
        else:
            ten.set_active(t, active)

    # -- Host protocol: observation -----------------------------------------------------------
    def topology(self) -> Topology:
        topo = self.spec.topology
        gpus = tuple(
            replace(g, mig_enabled=self.mig[g.index].enabled,
                    instances=self.mig[g.index].instances)
            for g in topo.gpus
        )
        return replace(topo, gpus=gpus)

    def observe(self, now: float) -> Snapshot:
        if self._closed:
            raise RuntimeError("SimHost is closed")
        if now < self.loop.now:
            raise ValueError(f"time runs forward: {now} < {self.loop.now}")
        self.loop.run_until(now)
        for d in self.pcie_domains:
            d.advance(now)
        for d in self._disks.values():
            d.advance(now)
        dt = now - self._obs_t
        self._obs_t = now
        busy = self._busy_deltas()
        return Snapshot(
            now=now,
            topology=self.topology(),
            gpus=self._gpu_samples(dt, busy),
            instances=self._instance_samples(dt, busy),
            tenants={t.name: self._tenant_sample(t) for t in self._order},
            host=self._host_signals(now),
            busy_gpus=frozenset(g for g, until in self.reconfig_until.items() if until > now),
        )

    def _booked(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for d in self.pcie_domains:
            for k, v in d.booked.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def _busy_deltas(self) -> dict[tuple[int, int | None], list[float]]:
        """Kernel seconds, SM-fraction seconds and HBM bytes per placement since last look."""
        out: dict[tuple[int, int | None], list[float]] = {}
        for key, acc in self._busy.items():
            seen = self._busy_seen.setdefault(key, [0.0, 0.0, 0.0])
            out[key] = [a - s for a, s in zip(acc, seen, strict=True)]
            seen[:] = acc
        return out

    def _gpu_samples(self, dt: float, deltas: Mapping[tuple[int, int | None], list[float]],
                     ) -> tuple[GpuSample, ...]:
        booked = self._booked()
        tx: dict[int, float] = {}
        for t in self._order:
            if isinstance(t, Inference):
                tx[t.placement.gpu] = tx.get(t.placement.gpu, 0.0) + t.tx_bytes
        out: list[GpuSample] = []
        for g, ms in self.mig.items():
            rx = sum(v for k, v in booked.items() if k // 1000 == g)
            inc = max(0.0, rx - self._rx_seen[g])
            self._rx_seen[g] = rx
            # NVML byte counters: exact in hardware, sampled a little off the tick boundary
            self._rx_noisy[g] += inc * max(0.0, 1.0 + float(self._noise.normal(0.0, 0.005)))
            busy = [0.0, 0.0, 0.0]
            for key, d in deltas.items():
                if key[0] == g:
                    for i in range(3):
                        busy[i] += d[i]
            sm_act = min(1.0, busy[1] / dt) if dt > 0 else 0.0
            power = ms.model.idle_w + (ms.model.tdp_w - ms.model.idle_w) * sm_act
            if ms.enabled:
                sm_util = mem_util = None  # NVML: utilisation is not supported in MIG mode
            elif dt > 0:
                sm_util = self._noisy01(busy[0] / dt)
                mem_util = self._noisy01(busy[2] / (ms.model.hbm_bps * dt))
            else:
                sm_util = mem_util = None
            out.append(GpuSample(
                gpu=g, sm_util=sm_util, mem_util=mem_util,
                pcie_tx_bytes=int(tx.get(g, 0.0)), pcie_rx_bytes=int(self._rx_noisy[g]),
                pcie_replays=0, power_w=round(power, 1), healthy=True,
            ))
        return tuple(out)

    def _noisy01(self, x: float) -> float:
        return min(1.0, max(0.0, x + float(self._noise.normal(0.0, 0.01))))

    def _instance_samples(self, dt: float, deltas: Mapping[tuple[int, int | None], list[float]],
                          ) -> tuple[InstanceSample, ...]:
        """GPM samples: Hopper and later only, per MIG instance."""
        out: list[InstanceSample] = []
        booked = self._booked()
        for g, ms in self.mig.items():
            if not (ms.enabled and ms.model.gpm) or dt <= 0:
                continue
            for inst in ms.instances:
                d = deltas.get((g, inst.gi_id), [0.0, 0.0, 0.0])
                frac = ms.sm_count(inst.gi_id) / ms.model.sm_count
                hbm = ms.model.hbm_bps * ms.memory_slices(inst.gi_id) / 8
                sm = d[1] / dt / frac
                dram = d[2] / (hbm * dt)
                acct = self._acct(Placement(g, inst.gi_id))
                rx = booked.get(acct, 0.0)
                rate = (rx - self._acct_seen.get(acct, 0.0)) / dt
                self._acct_seen[acct] = rx
                out.append(InstanceSample(
                    gpu=g, gi_id=inst.gi_id, sm_activity=self._noisy01(sm),
                    dram_activity=self._noisy01(dram), pcie_tx_bps=0.0,
                    pcie_rx_bps=max(0.0, rate * (1 + float(self._noise.normal(0, 0.005)))),
                ))
        return tuple(out)

    def _tenant_sample(self, t: Tenant) -> TenantSample:
        latency = LatencyWindow()
        work: float | None = None
        io: tuple[IoCounters, ...] = ()
        if isinstance(t, Inference):
            ttft, tpot = t.take_window()
            latency = LatencyWindow(_sketch(ttft), _sketch(tpot))
            work = float(t.drain_completed(self.loop.now))
            running = t.up
        else:
            running = t.working
        if isinstance(t, Etl):
            b = t.disk_bytes()
            io = (IoCounters(t.device, rbytes=int(b), rios=int(b // (1 << 20))),)
        pend = self._pending.get(t.name)
        return TenantSample(
            name=t.name, tenant_class=TenantClass(t.spec.tenant_class), running=running,
            placement=pend.placement if pend is not None else t.placement, latency=latency,
            io=io, restartable=t.spec.may_restart, mps_pct=t.mps_pct, share_pct=t.share_pct,
            work_done=work,
        )

    def _host_signals(self, now: float) -> HostSignals:
        disk_bytes: dict[str, float] = {d: 0.0 for d in self._disks}
        for t in self._order:
            if isinstance(t, Etl):
                disk_bytes[t.device] += t.disk_bytes()
        irqs: dict[int, int] = {}
        for node in self.spec.topology.numa_nodes:
            for cpu in node.cpus:
                irqs[cpu] = int(TIMER_HZ * now)
        for dev, b in disk_bytes.items():
            node_cpus = next((n.cpus for n in self.spec.topology.numa_nodes
                              if n.node == self._disk_numa.get(dev)), ())
            cpus = node_cpus[:IRQ_CPUS_PER_DISK]
            for cpu in cpus:
                irqs[cpu] = irqs.get(cpu, 0) + int(b / (1 << 20) / len(cpus))
        return HostSignals(irqs_per_cpu=irqs,
                           disk_bytes={d: int(b) for d, b in disk_bytes.items()})

    # -- Host protocol: live levers -----------------------------------------------------------
    def _tenant(self, name: str) -> Tenant:
        try:
            return self.tenants[name]
        except KeyError:
            raise LeverError(f"unknown tenant {name!r}", permanent=True) from None

    def _device(self, device: str) -> str:
        if device not in self._disks:
            raise LeverError(f"no block device {device!r} (MAJ:MIN)", permanent=True)
        return device

    def get_io_limit(self, tenant: str, device: str) -> IoLimit:
        t = self._tenant(tenant)
        return t.io_limits.get(self._device(device), IoLimit())

    def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None:
        t = self._tenant(tenant)
        dev = self._device(device)
        for v in (limit.rbps, limit.wbps, limit.riops, limit.wiops):
            if v is not None and v <= 0:
                raise LeverError(f"io.max values must be positive, got {limit}", permanent=True)
        if limit.unlimited:
            t.io_limits.pop(dev, None)
        else:
            t.io_limits[dev] = limit
        if isinstance(t, Etl):
            t.on_limit_change()

    # -- Host protocol: restart-class levers --------------------------------------------------
    def _fit_problem(self, t: Tenant, p: Placement) -> str | None:
        if p.gpu not in self.mig:
            return f"no GPU {p.gpu}"
        ms = self.mig[p.gpu]
        if ms.enabled and p.gi_id is None:
            return f"GPU {p.gpu} is in MIG mode: a GPU instance is needed"
        if not ms.enabled and p.gi_id is not None:
            return f"GPU {p.gpu} is not in MIG mode"
        if p.gi_id is not None and ms.instance(p.gi_id) is None:
            return f"GPU {p.gpu} has no GPU instance {p.gi_id}"
        mem = ms.memory_bytes(p.gi_id)
        if t.memory_limit_bytes is not None:
            mem = min(mem, t.memory_limit_bytes)
        need = t.memory_need_bytes()
        if need > mem:
            return f"{t.name} needs {need / 2**30:.1f} GiB, {p} offers {mem / 2**30:.1f} GiB"
        return None

    def restart_tenant(self, tenant: str, placement: Placement | None,
                       env: Mapping[str, str]) -> None:
        t = self._tenant(tenant)
        now = self.loop.now
        pend = self._pending.get(tenant)
        if pend is not None:
            raise LeverError(f"{tenant}: a restart is already in progress",
                             retry_after_s=max(1.0, pend.up_at - now))
        target = placement if placement is not None else t.placement
        why = self._fit_problem(t, target)
        if why is not None:
            raise LeverError(f"{tenant}: cannot run on {target}: {why}", permanent=True)
        mps: int | None = None
        if MPS_ENV in env:
            raw = env[MPS_ENV]
            if not raw.isdigit() or not 1 <= int(raw) <= 100:
                raise LeverError(f"{MPS_ENV}={raw!r} is not 1..100", permanent=True)
            mps = int(raw)
        self._changed()
        t.go_down(now)
        up_at = max(now + self.restart_s, self.reconfig_until[target.gpu])
        self._token += 1
        self._pending[tenant] = _Pending(up_at, target, mps, self._token)
        token = self._token
        self.loop.schedule(up_at, lambda when: self._restarted(when, tenant, token))

    def _restarted(self, now: float, name: str, token: int) -> None:
        pend = self._pending.get(name)
        if pend is None or pend.token != token:
            return
        del self._pending[name]
        t = self.tenants[name]
        if self._fit_problem(t, pend.placement) is not None:
            return  # its instance vanished meanwhile: the process fails to start, stays down
        self._changed()
        t.placement = pend.placement
        t.mps_pct = pend.mps_pct
        t.share_pct = t.pending_share_pct
        t.come_up(now)

    def stop_tenant(self, tenant: str) -> None:
        t = self._tenant(tenant)
        self._changed()
        self._pending.pop(tenant, None)
        t.go_down(self.loop.now)

    # -- Host protocol: MIG -------------------------------------------------------------------
    def _mig(self, gpu: int) -> MigState:
        ms = self.mig.get(gpu)
        if ms is None:
            raise LeverError(f"no GPU {gpu}", permanent=True)
        if not ms.enabled:
            raise LeverError(f"GPU {gpu}: MIG mode is disabled", permanent=True)
        return ms

    def _reconfigure(self, gpu: int) -> None:
        now = self.loop.now
        if self.reconfig_until[gpu] <= now:
            self.mig_reconfigs += 1
            self.reconfig_until[gpu] = now + self.reconfig_s

    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        ms = self._mig(gpu)
        if ms.instance(gi_id) is None:
            raise LeverError(f"GPU {gpu}: no GPU instance {gi_id}", permanent=True)
        place = Placement(gpu, gi_id)
        users = [t.name for t in self._order if t.up and t.placement == place]
        users += [n for n, p in self._pending.items() if p.placement == place]
        if users:
            raise LeverError(f"GPU {gpu} instance {gi_id} is in use by {', '.join(users)}",
                             retry_after_s=5.0)
        ms.destroy(gi_id)
        self._reconfigure(gpu)

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance:
        ms = self._mig(gpu)
        why = ms.can_create(profile, start)
        if why is not None and "occupied" in why:
            raise LeverError(why, retry_after_s=10.0)
        inst = ms.create(profile, start)
        self._reconfigure(gpu)
        return inst

    # -- Host protocol: vGPU ------------------------------------------------------------------
    def set_vgpu(self, tenant: str, compute_pct: int, memory_bytes: int) -> None:
        t = self._tenant(tenant)
        if not 1 <= compute_pct <= 100:
            raise LeverError(f"compute share {compute_pct} % is not 1..100", permanent=True)
        if t.placement.gi_id is not None:
            raise LeverError(f"{tenant} runs on a MIG instance; HAMi shares whole GPUs",
                             permanent=True)
        if memory_bytes < t.memory_need_bytes():
            raise LeverError(f"{tenant} needs {t.memory_need_bytes()} bytes, got {memory_bytes}",
                             permanent=True)
        if not t.spec.may_restart:
            raise LeverError(f"{tenant} is not restartable: HAMi reads sm_limit only when the "
                             "process starts", permanent=True)
        t.memory_limit_bytes = memory_bytes  # HAMi: applies from the next allocation
        t.pending_share_pct = compute_pct  # sm_limit is read once per process: at restart
        # like RealHost.set_vgpu: the share takes effect through a restart (downtime)
        self.restart_tenant(tenant, None, {})

    def close(self) -> None:
        self._closed = True

    # -- ground truth (evaluation only) --------------------------------------------------------
    def results(self) -> dict[str, Any]:
        now = self.loop.now
        tenants = {t.name: t.results(now, now) for t in self._order}
        return {"seconds": now, "seed": self.seed, "tenants": tenants,
                "mig_reconfigs": self.mig_reconfigs}

    def ttft_samples(self, tenant: str) -> tuple[np.ndarray, np.ndarray]:
        """(first-token time s, TTFT ms) of every served request of an inference tenant."""
        t = self.tenants[tenant]
        if not isinstance(t, Inference):
            raise ValueError(f"{tenant} is not an inference tenant")
        return np.asarray(t.ttft_t), np.asarray(t.ttft_s) * 1e3

    def timeline(self) -> dict[str, Any]:
        """Per-second p99 TTFT (ms) of each latency tenant, None for seconds without requests."""
        seconds = math.ceil(self.loop.now)
        series = {t.name: t.window_p99_ms(seconds) for t in self._order
                  if isinstance(t, Inference) and t.spec.tenant_class == "latency"}
        return {"seconds": list(range(seconds)), "ttft_p99_ms": series}

    def run(self, seconds: float, interval_s: float = 2.0) -> None:
        """Observe every ``interval_s`` until ``seconds`` (no controller): for tests, benches."""
        t = self.loop.now
        while t < seconds - 1e-9:
            t = min(seconds, t + interval_s)
            self.observe(t)
