"""Root-cause diagnosis: which shared resource, and which neighbour, inflate a victim's tail.

For every neighbour that shares something with the victim in the topology (same GPU, same PCIe
switch or root, same NUMA node) and every signal that neighbour drives through that resource, the
candidate gets

    pressure = current signal / capacity of the shared resource        (0 .. ~1)
               (current: the larger of its last ticks' mean and its mean over the victim's
               tail window - a neighbour that stopped a moment ago still fills that window)
    r        = Pearson(victim p99/SLO, signal smoothed over window_s)   over the sliding history
    score    = pressure x (1 + r) / 2          (r = 0 when undefined: constant signal or too short)
             x min(1, slope x signal / (victim p99/SLO - recovery bound))   when r is defined

so a heavy flow that rises and falls with the victim's tail ranks first, a heavy flow with no
history ranks half, a flow that is high while the victim is calm (r -> -1) drops out, and a
flow whose fitted effect (the least-squares slope of the victim's p99/SLO on it, times its
current value) could not bring the tail back under the recovery bound is discounted. The
cause is the channel of the best candidate. Protected tenants are never suspects: their traffic
still counts as anonymous load of the shared resource (which victim-side levers can address).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gpuguardd.model.snapshot import Placement, Snapshot, TenantClass, TenantSample
from gpuguardd.model.topology import Topology
from gpuguardd.policy.signals import TickRates

#: a candidate below this pressure is noise, whatever its correlation
MIN_PRESSURE = 0.02
#: below this score a tenant is named in the explanation but not acted on: it could account
#: for at most a few percent of the shared link, or its correlation argues against it
MIN_SCORE = 0.05
#: a signal the victim itself contributes to (a shared SM pool's activity) blames a neighbour
#: only with at least this correlation
AMBIGUOUS_R = 0.5
#: fewer paired points than this give no correlation
MIN_POINTS = 5
#: a signal below this fraction of its current value counts as quiet
QUIET = 0.1
#: a suspect whose last ticks run below this fraction of its window mean is fading away
FADING = 0.5
#: named suspects beat anonymous load of the same resource at equal evidence
ANONYMOUS_WEIGHT = 0.9

#: prior weight of each kind of sharing: a flow through the victim's own link (same GPU, same
#: switch) acts on its transfers directly; a shared root complex less so; a shared NUMA node only
#: through host memory, page cache and CPUs
RELATION_WEIGHT: dict[str, float] = {
    "instance": 1.0, "gpu": 1.0, "switch": 1.0, "root": 0.4, "numa": 0.4, "disk": 1.0,
}
#: Scale for the pressure a tenant puts on a block device the victim also uses. Topology does
#: not know a disk's bandwidth, so pressure is relative to a nominal NVMe-class 1 GB/s
#: (``pressure`` saturates in the score; correlation does the ranking).
DISK_NOMINAL_BPS = 1e9

#: an IRQ burst of IRQ_BURST x the node's normal rate above it reads as pressure 1
IRQ_BURST = 3.0
#: interrupts/s below which a node's rate is idle noise
IRQ_FLOOR = 1000.0

CAUSES = ("io", "pcie", "compute", "membw", "host", "unknown")


@dataclass(frozen=True, slots=True)
class Suspect:
    """One candidate explanation. ``tenant`` None = anonymous load (not actionable on a tenant)."""

    tenant: str | None
    cause: str  # one of CAUSES
    signal: str  # "disk read", "disk write", "PCIe", "SM", "DRAM", "IRQ"
    relation: str  # "same switch sw0", "same GPU 0", "same NUMA 1", ...
    value: float  # current signal (bytes/s, 0..1 activity or irq/s)
    pressure: float
    r: float | None
    score: float
    #: the victim's p99/SLO this signal accounts for at its current value: the fitted line's
    #: slope x value, bounded by the tail's excess over its level while the signal was quiet;
    #: None without a correlation or without quiet ticks. What cutting the signal would buy,
    #: to first order: the ladder uses it to predict how deep a throttle must cut.
    effect: float | None = None
    #: the signal at the last tick; ``value`` is what the victim's window saw
    now: float | None = None

    @property
    def fading(self) -> bool:
        """Gone quiet within the victim's window: its tail will follow without a lever."""
        return self.now is not None and self.now < FADING * self.value

    def describe(self) -> str:
        corr = f"r={self.r:.2f}" if self.r is not None else "r=n/a"
        who = self.tenant if self.tenant is not None else "other load"
        value = fmt_value(self.signal, self.value)
        if self.fading:
            assert self.now is not None
            value += f" over the window, {fmt_value(self.signal, self.now)} now"
        return f"{corr} with {who} {self.signal} {value}, {self.relation}"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    cause: str
    suspects: tuple[Suspect, ...]  # ranked, best first (named and anonymous)

    @property
    def named(self) -> tuple[Suspect, ...]:
        """Tenants with enough evidence to act on (score >= MIN_SCORE), best first."""
        return tuple(s for s in self.suspects if s.tenant is not None and s.score >= MIN_SCORE)

    def describe(self) -> str:
        if not self.suspects:
            return "cause unknown (no neighbour shares a loaded resource)"
        return f"cause {self.cause} ({self.suspects[0].describe()})"


def fmt_value(signal: str, value: float) -> str:
    if signal in ("SM", "DRAM"):
        return f"{value * 100:.0f}%"
    if signal == "IRQ":
        return f"{value:.0f}/s"
    return fmt_bps(value)


def fmt_bps(bps: float) -> str:
    if bps >= 1e9:
        return f"{bps / 1e9:.1f} GB/s"
    return f"{bps / 1e6:.0f} MB/s"


def link_bps(topology: Topology, gpu: int) -> float:
    """Capacity of the link the GPU's traffic shares: its switch uplink, else its own link."""
    info = topology.gpu(gpu)
    if info.switch is not None:
        sw = topology.switch(info.switch)
        if sw is not None and sw.uplink_bps > 0:
            return sw.uplink_bps
    sw = topology.switch(info.root)
    if sw is not None and sw.uplink_bps > 0:
        return sw.uplink_bps
    # ~0.985 GB/s per Gen3 lane after encoding, doubling per generation
    return 0.985e9 * max(info.pcie_width, 1) * 2.0 ** max(info.pcie_gen - 3, 0)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < MIN_POINTS or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 1e-12 * max(mx * mx, 1e-30) * n or syy <= 1e-12:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


Signal = Callable[[TickRates], float | None]


def _smoothed(history: Sequence[TickRates], signal: Signal, window_s: float) -> list[float | None]:
    """The signal averaged over the same window as the victim's tail (which lags its cause)."""
    values = [signal(h) for h in history]
    out: list[float | None] = []
    lo, total, count = 0, 0.0, 0
    for i, h in enumerate(history):
        v = values[i]
        if v is not None:
            total, count = total + v, count + 1
        while history[lo].at <= h.at - window_s:
            old = values[lo]
            if old is not None:
                total, count = total - old, count - 1
            lo += 1
        out.append(total / count if count else None)
    return out


@dataclass(frozen=True, slots=True)
class _Evidence:
    value: float  # the load the victim's window saw: the larger of ``now`` and the window mean
    pressure: float
    r: float | None
    #: the victim's p99/SLO the fitted line attributes to the signal's current value
    #: (slope x value); None without a correlation
    explained: float | None
    #: the victim's mean p99/SLO over the ticks the signal was quiet (below QUIET of its
    #: current value), None with fewer than MIN_POINTS of them
    quiet_ratio: float | None
    #: the signal at the last tick (``value``: the larger of its recent and its window mean)
    now: float


def _candidate(
    victim: str,
    history: Sequence[TickRates],
    signal: Signal,
    capacity: float,
    recent: int,
    window_s: float,
) -> _Evidence | None:
    """The evidence for one signal, or None when it was never observed."""
    values = [signal(h) for h in history[-recent:]]
    known = [v for v in values if v is not None]
    if not known:
        return None
    smoothed = _smoothed(history, signal, window_s)
    # the load the victim's current window saw: a neighbour that went quiet a moment ago still
    # fills the window the tail is read from (the recent mean catches an onset sooner)
    now = values[-1] if values[-1] is not None else sum(known) / len(known)
    value = max(sum(known) / len(known), smoothed[-1] or 0.0)
    pressure = value / capacity if capacity > 0 else 0.0
    xs: list[float] = []
    ys: list[float] = []
    for h, x in zip(history, smoothed, strict=True):
        y = h.ratio.get(victim)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    r = pearson(xs, ys)
    explained = None
    if r is not None:
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        explained = max(0.0, sxy / sxx * value)
    quiet = [y for x, y in zip(xs, ys, strict=True) if x <= QUIET * value]
    quiet_ratio = sum(quiet) / len(quiet) if len(quiet) >= MIN_POINTS else None
    return _Evidence(value, pressure, r, explained, quiet_ratio, now)


def relation(topology: Topology, v: Placement, o: Placement) -> tuple[str, str] | None:
    """(kind, text) of what two placements share; kind in gpu/instance/switch/root/numa."""
    gv, go = topology.gpu(v.gpu), topology.gpu(o.gpu)
    if v.gpu == o.gpu:
        if v.gi_id is None or o.gi_id is None or v.gi_id == o.gi_id:
            return "instance", f"same GPU {v.gpu} without MIG isolation"
        return "gpu", f"same GPU {v.gpu}"
    if gv.switch is not None and gv.switch == go.switch:
        return "switch", f"same switch {gv.switch}"
    if gv.root == go.root:
        return "root", f"same root {gv.root}"
    if gv.numa_node == go.numa_node:
        return "numa", f"same NUMA {gv.numa_node}"
    return None


def device_relation(topology: Topology, v: Placement, devno: str) -> tuple[str, str] | None:
    """What a block device shares with the victim's GPU: its switch or its NUMA node."""
    gv = topology.gpu(v.gpu)
    for d in topology.block_devices:
        if d.devno == devno:
            if d.switch is not None and d.switch == gv.switch:
                return "switch", f"disk {d.name} on switch {d.switch}"
            if d.numa_node >= 0 and d.numa_node == gv.numa_node:
                return "numa", f"disk {d.name} on NUMA {d.numa_node}"
    return None


def is_protected(t: TenantSample, protected: frozenset[str]) -> bool:
    return t.name in protected or t.tenant_class == TenantClass.LATENCY


def diagnose(
    victim: str,
    snapshot: Snapshot,
    history: Sequence[TickRates],
    *,
    protected: frozenset[str],
    recent: int,
    window_s: float,
    moved_at: Mapping[str, float] | None = None,
    latent_bps: Mapping[tuple[str, str], float] | None = None,
    recovery_bound: float = 0.8,
) -> Diagnosis:
    """Rank every topologically plausible (neighbour, channel) by pressure x correlation.

    A tenant's history before its last placement change describes another neighbourhood: each
    candidate is judged only on the ticks since both it and the victim last moved. A throttled
    tenant's disk pressure is its demand before the throttle (``latent_bps`` per tenant and
    device), not the rate the throttle lets through: the throttle hides it, it did not go away.
    """
    vt = snapshot.tenants.get(victim)
    if vt is None or not history:
        return Diagnosis("unknown", ())
    topo = snapshot.topology
    # A victim without a (known) GPU - a host-level tenant, or a host without GPUs - still
    # shares the block devices it does I/O on: that is the only relation it can have.
    vp = vt.placement
    if vp is not None:
        try:
            topo.gpu(vp.gpu)
        except KeyError:
            vp = None
    victim_disks = {c.device for c in vt.io if c.rbytes or c.wbytes}
    if vp is None and not victim_disks:
        return Diagnosis("unknown", ())
    link = link_bps(topo, vp.gpu) if vp is not None else DISK_NOMINAL_BPS
    moves = moved_at or {}
    now_ratio = history[-1].ratio.get(victim)
    excess = now_ratio - recovery_bound if now_ratio is not None else 0.0
    found: list[Suspect] = []

    def add(
        tenant: str | None,
        cause: str,
        label: str,
        relation: str,
        signal: Signal,
        cap: float,
        weight: float = 1.0,
        need_r: float | None = None,
        latent: float = 0.0,
    ) -> None:
        since = max(moves.get(victim, -math.inf),
                    moves.get(tenant, -math.inf) if tenant is not None else -math.inf)
        hist = history if since == -math.inf else [h for h in history if h.at > since]
        c = _candidate(victim, hist, signal, cap, recent, window_s)
        if c is None:
            return
        value, pressure, r = c.value, c.pressure, c.r
        if cap > 0:
            pressure = max(pressure, latent / cap)
        if pressure < MIN_PRESSURE or (need_r is not None and (r is None or r < need_r)):
            return
        score = weight * pressure * (1.0 + (r if r is not None else 0.0)) / 2.0
        if c.explained is not None and excess > 0 and latent <= 0:
            # a fitted effect too small to bring the tail back to the recovery bound is a
            # coincidence or a side issue, whatever its correlation
            score *= min(1.0, c.explained / excess)
        if tenant is None:
            score *= ANONYMOUS_WEIGHT
        if score > 0:
            found.append(Suspect(tenant, cause, label, relation, value, pressure, r, score,
                                 _effect(c, now_ratio), c.now))

    anon_pcie_gpus: list[int] = []
    for o in sorted(snapshot.tenants.values(), key=lambda t: t.name):
        if o.name == victim:
            continue
        named = not is_protected(o, protected)
        rel = None
        try:
            if vp is not None and o.placement is not None:
                rel = relation(topo, vp, o.placement)
        except KeyError:
            rel = None
        # block I/O: the bytes land in host memory and (for a GPU job) cross its GPU link;
        # on a disk the victim itself uses they also queue in front of the victim's own I/O
        for dev in sorted({c.device for c in o.io}):
            drel = rel or (device_relation(topo, vp, dev) if vp is not None else None)
            if drel is None and dev in victim_disks:
                drel = ("disk", f"same disk {dev}")
            if drel is None or not named:
                continue
            kind, text = drel
            cause = "io" if kind in ("numa", "disk") else "pcie"
            cap = DISK_NOMINAL_BPS if kind == "disk" else link
            hidden = (latent_bps or {}).get((o.name, dev), 0.0)
            for direction, label in (("r", "disk read"), ("w", "disk write")):
                add(o.name, cause, label, text, _io_signal(o.name, dev, direction), cap,
                    RELATION_WEIGHT[kind], latent=hidden if direction == "r" else 0.0)
        if rel is None or o.placement is None:
            continue
        kind, text = rel
        op = o.placement
        if kind in ("switch", "root"):
            if named and _sole_tenant(snapshot, op.gpu, o.name):
                add(o.name, "pcie", "PCIe", text, _pcie_signal(op.gpu), link,
                    RELATION_WEIGHT[kind])
            else:
                anon_pcie_gpus.append(op.gpu)
        elif kind == "gpu":
            # MIG isolates SMs and DRAM; only the GPU's PCIe link is shared
            ik = (op.gpu, op.gi_id if op.gi_id is not None else -1)
            if named:
                add(o.name, "pcie", "PCIe", text, _inst_pcie_signal(ik), link)
        elif kind == "instance" and named:
            # the pool's SM/DRAM activity includes the victim's own: only co-variation with the
            # victim's tail can pin it on the neighbour
            sig_sm, sig_dram = _compute_signals(op)
            add(o.name, "compute", "SM", text, sig_sm, 1.0, need_r=AMBIGUOUS_R)
            add(o.name, "membw", "DRAM", text, sig_dram, 1.0, need_r=AMBIGUOUS_R)
    if vp is None:
        return _rank(found)
    if anon_pcie_gpus:
        gpus = tuple(sorted(set(anon_pcie_gpus)))
        sw = topo.gpu(vp.gpu).switch or topo.gpu(vp.gpu).root
        add(None, "pcie", "PCIe", f"GPUs {','.join(map(str, gpus))} behind {sw}",
            _sum_pcie_signal(gpus), link)
    numa = topo.gpu(vp.gpu).numa_node
    med = _irq_normal(history, numa)
    add(None, "host", "IRQ", f"CPUs of NUMA {numa}", _irq_excess(numa, med), IRQ_BURST * med)
    return _rank(found)


def _effect(c: _Evidence, now_ratio: float | None) -> float | None:
    """How much of the victim's p99/SLO the signal accounts for now.

    The fitted slope over-reads at an onset: a p99 jumps with the first bursts while the
    smoothed signal is still ramping up. The victim's tail over the ticks the signal was quiet
    bounds it: removing the signal cannot take the tail below what it was without it. A signal
    never seen quiet has no such bound, and no effect is claimed for it.
    """
    if c.explained is None or now_ratio is None or c.quiet_ratio is None:
        return None  # no correlation, or never seen quiet: nothing bounds the fitted line
    return max(0.0, min(c.explained, now_ratio - c.quiet_ratio))


def _rank(found: list[Suspect]) -> Diagnosis:
    # at equal evidence the disk signal speaks for a tenant: it names the cheapest lever
    found.sort(key=lambda s: (-round(s.score, 9), s.tenant is None, s.tenant or "",
                              not s.signal.startswith("disk"), s.signal))
    # one entry per (tenant, cause): the strongest signal speaks for it
    seen: set[tuple[str | None, str]] = set()
    ranked: list[Suspect] = []
    for s in found:
        if (s.tenant, s.cause) not in seen:
            seen.add((s.tenant, s.cause))
            ranked.append(s)
    cause = ranked[0].cause if ranked else "unknown"
    return Diagnosis(cause, tuple(ranked))


def _sole_tenant(snapshot: Snapshot, gpu: int, name: str) -> bool:
    """Only then is a GPU-level counter this tenant's own traffic."""
    return all(
        t.name == name or t.placement is None or t.placement.gpu != gpu
        for t in snapshot.tenants.values()
        if t.running
    )


def _io_signal(tenant: str, device: str, direction: str) -> Signal:
    def f(h: TickRates) -> float | None:
        src = h.io_read_bps if direction == "r" else h.io_write_bps
        return src.get((tenant, device))

    return f


def _pcie_signal(gpu: int) -> Signal:
    return lambda h: h.pcie_bps.get(gpu)


def _sum_pcie_signal(gpus: tuple[int, ...]) -> Signal:
    def f(h: TickRates) -> float | None:
        vals = [h.pcie_bps[g] for g in gpus if g in h.pcie_bps]
        return sum(vals) if vals else None

    return f


def _inst_pcie_signal(key: tuple[int, int]) -> Signal:
    return lambda h: h.inst_pcie_bps.get(key)


def _compute_signals(p: Placement) -> tuple[Signal, Signal]:
    if p.gi_id is not None:
        key = (p.gpu, p.gi_id)

        def sm(h: TickRates) -> float | None:
            return h.inst_sm.get(key, h.sm.get(p.gpu))

        def dram(h: TickRates) -> float | None:
            return h.inst_dram.get(key, h.mem.get(p.gpu))

        return sm, dram
    return (lambda h: h.sm.get(p.gpu)), (lambda h: h.mem.get(p.gpu))


def _irq_excess(numa: int, median: float) -> Signal:
    """IRQ rate above the node's own median: a steady rate, however high, is its normal."""

    def f(h: TickRates) -> float | None:
        v = h.irq_numa.get(numa)
        return None if v is None else max(0.0, v - median)

    return f


def _irq_normal(history: Sequence[TickRates], numa: int) -> float:
    """The node's normal IRQ rate: the lower quintile of its history (bursts may fill half of
    it, so the median could be a burst)."""
    vals = sorted(h.irq_numa[numa] for h in history if numa in h.irq_numa)
    return max(vals[len(vals) // 5], IRQ_FLOOR) if vals else IRQ_FLOOR
