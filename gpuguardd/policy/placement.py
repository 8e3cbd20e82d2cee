"""PCIe/NUMA-aware placement: score free GPUs/instances and pick a move that removes a conflict.

Penalty of putting tenant ``m`` at candidate ``p`` (lower is better; rates are the mean of the
last few ticks, each term normalised to 0..~1):

    penalty(p) =   link load of p's switch (PCIe bytes of every GPU behind it, minus m's own)
                       / uplink capacity
                 + 0.2 x PCIe bytes of the other GPUs under p's root complex / uplink
                 + 0.4 x block I/O of other tenants on p's NUMA node / uplink capacity
                 + 0.5 x IRQ burst on p's NUMA node ((rate / normal rate - 1) / 3, clipped)
                 + m's own PCIe rate / uplink x (protected tenants behind p's switch
                                                  + 0.2 x those elsewhere under p's root)
                       (a heavy mover must not become someone else's noisy neighbour)
                 + 0.1 x memory slices wasted (candidate larger than needed) / 8
                 - 0.05 x memory slices left free on p's GPU / 8   (room for a later resize)

A move must also *separate* the two parties on the blamed resource (different switch and root
for pcie, different GPU/instance for compute/membw, different NUMA node for io/host); a
victim's own move must cut its penalty by at least ``MIN_GAIN``, and the caller may hold the
victim back (``victim_block``: its restart would cost more than it saves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gpuguardd.model.snapshot import Placement, Snapshot, TenantSample
from gpuguardd.model.topology import Topology
from gpuguardd.policy.diagnosis import IRQ_BURST, IRQ_FLOOR, Diagnosis, Suspect, link_bps
from gpuguardd.policy.mig import free_slices
from gpuguardd.policy.signals import TickRates

MIN_GAIN = 0.2
NUMA_IO_WEIGHT = 0.4
IRQ_WEIGHT = 0.5
WASTE_WEIGHT = 0.1
FREE_BONUS = 0.05
ROOT_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class Move:
    tenant: str
    source: Placement
    to: Placement
    penalty: float
    before: float
    why: str


def _mean(vals: Sequence[float]) -> float:
    return sum(vals) / len(vals) if vals else 0.0


def _size(topo: Topology, p: Placement) -> int:
    """Memory slices a placement offers (a whole GPU = 8)."""
    if p.gi_id is None:
        return 8
    for i in topo.gpu(p.gpu).instances:
        if i.gi_id == p.gi_id:
            return i.size
    return 0


def free_placements(snapshot: Snapshot, taken_extra: set[str]) -> list[Placement]:
    """Existing MIG instances and whole non-MIG GPUs that no tenant sits on."""
    taken = {str(t.placement) for t in snapshot.tenants.values() if t.placement is not None}
    taken |= taken_extra
    used_gpus = {t.placement.gpu for t in snapshot.tenants.values() if t.placement is not None}
    out: list[Placement] = []
    for g in snapshot.topology.gpus:
        if g.mig_enabled:
            out += [Placement(g.index, i.gi_id) for i in g.instances
                    if str(Placement(g.index, i.gi_id)) not in taken]
        elif g.index not in used_gpus and str(Placement(g.index)) not in taken:
            out.append(Placement(g.index))
    return out


def _separated(topo: Topology, a: Placement, b: Placement, cause: str) -> bool:
    ga, gb = topo.gpu(a.gpu), topo.gpu(b.gpu)
    if cause == "pcie":
        # a shared root complex is scored (ROOT_WEIGHT), not forbidden: on one-socket hosts
        # every GPU shares it, and it is far wider than a switch uplink
        return a.gpu != b.gpu and (ga.switch is None or ga.switch != gb.switch)
    if cause in ("compute", "membw"):
        return a.gpu != b.gpu or (a.gi_id is not None and b.gi_id is not None
                                  and a.gi_id != b.gi_id)
    return ga.numa_node != gb.numa_node


class Scorer:
    """Placement penalties from the recent history of rates."""

    def __init__(self, snapshot: Snapshot, recent: Sequence[TickRates],
                 protected: frozenset[str], history: Sequence[TickRates] = ()):
        history = history or recent
        self.snap = snapshot
        self.topo = snapshot.topology
        self.recent = recent
        self.protected = protected
        self.pcie = {g.index: _mean([h.pcie_bps[g.index] for h in recent
                                     if g.index in h.pcie_bps]) for g in self.topo.gpus}
        self.io = {t.name: _mean([h.tenant_io_bps(t.name) for h in recent])
                   for t in snapshot.tenants.values()}
        self.irq_burst: dict[int, float] = {}
        for node in self.topo.numa_nodes:
            vals = sorted(h.irq_numa[node.node] for h in history if node.node in h.irq_numa)
            normal = max(vals[len(vals) // 5], IRQ_FLOOR) if vals else IRQ_FLOOR
            last = recent[-1].irq_numa.get(node.node, normal) if recent else normal
            self.irq_burst[node.node] = min(1.0, max(0.0, (last / normal - 1.0) / IRQ_BURST))

    def own_pcie(self, t: TenantSample) -> float:
        """A tenant's own PCIe traffic: its GPU's, if it is alone there; else its disk reads."""
        if t.placement is None:
            return 0.0
        alone = all(o.name == t.name or o.placement is None or o.placement.gpu != t.placement.gpu
                    for o in self.snap.tenants.values())
        return self.pcie.get(t.placement.gpu, 0.0) if alone else self.io.get(t.name, 0.0)

    def penalty(self, m: TenantSample, p: Placement) -> float:
        gp = self.topo.gpu(p.gpu)
        link = link_bps(self.topo, p.gpu)
        mine = self.own_pcie(m)
        load = root_load = 0.0
        for g in self.topo.gpus:
            if self._same_link(g.index, p.gpu):
                load += self.pcie.get(g.index, 0.0)
            elif g.root == gp.root:
                root_load += self.pcie.get(g.index, 0.0)
        if m.placement is not None and self._same_link(m.placement.gpu, p.gpu):
            load = max(0.0, load - mine)
        io = sum(rate for name, rate in self.io.items() if name != m.name
                 for t in (self.snap.tenants[name],)
                 if t.placement is not None and self.topo.gpu(t.placement.gpu).numa_node
                 == gp.numa_node)
        others = [t for t in self.snap.tenants.values()
                  if t.name != m.name and t.name in self.protected and t.placement is not None]
        neighbours = sum(1 for t in others if t.placement is not None
                         and self._same_link(t.placement.gpu, p.gpu))
        root_neighbours = sum(1 for t in others if t.placement is not None
                              and self.topo.gpu(t.placement.gpu).root == gp.root) - neighbours
        need = _size(self.topo, m.placement) if m.placement is not None else 1
        waste = max(0, _size(self.topo, p) - need) if p.gi_id is not None else 0
        free = free_slices(gp) if gp.mig_enabled else 0
        return (load / link + NUMA_IO_WEIGHT * io / link
                + IRQ_WEIGHT * self.irq_burst.get(gp.numa_node, 0.0)
                + (mine / link) * (neighbours + ROOT_WEIGHT * root_neighbours)
                + ROOT_WEIGHT * root_load / link
                + WASTE_WEIGHT * waste / 8 - FREE_BONUS * free / 8)

    def _same_link(self, a: int, b: int) -> bool:
        ga, gb = self.topo.gpu(a), self.topo.gpu(b)
        return a == b or (ga.switch is not None and ga.switch == gb.switch)


def plan_move(
    victim: str,
    diag: Diagnosis,
    snapshot: Snapshot,
    recent: Sequence[TickRates],
    *,
    protected: frozenset[str],
    may_restart: Callable[[str], bool],
    history: Sequence[TickRates] = (),
    blocked_gpus: frozenset[int],
    taken: set[str],
    failed: Callable[[str], bool],
    victim_block: str | None = None,
) -> Move | str:
    """The best move that separates the victim from its blamed neighbour, or why there is none.

    A restartable batch suspect moves before the victim (it has no SLO to lose during a restart).
    """
    topo = snapshot.topology
    vt = snapshot.tenants.get(victim)
    if vt is None or vt.placement is None:
        return "placement: the victim has no known placement"
    scorer = Scorer(snapshot, recent, protected, history)
    free = [p for p in free_placements(snapshot, taken) if p.gpu not in blocked_gpus
            and _healthy(snapshot, p.gpu)]
    if not free:
        return "placement: no free GPU or MIG instance outside busy GPUs"
    why: list[str] = []
    suspects: list[Suspect] = [s for s in diag.named if s.tenant is not None]
    for s in suspects:
        assert s.tenant is not None
        st = snapshot.tenants.get(s.tenant)
        if st is None or st.placement is None or s.tenant in protected:
            continue
        if not may_restart(s.tenant):
            why.append(f"{s.tenant} is not restartable")
            continue
        if failed(f"place {s.tenant}"):
            why.append(f"moving {s.tenant} failed its trial recently")
            continue
        if st.placement.gpu in blocked_gpus:
            why.append(f"GPU {st.placement.gpu} of {s.tenant} is busy")
            continue
        if s.cause in ("io", "host"):
            continue  # its disk and NUMA node stay where they are: moving it does not help
        before = scorer.penalty(st, st.placement)
        away = _away_from(topo, vt.placement, s.cause)
        best = _best(scorer, st, free, need=_size(topo, st.placement), ok=away)
        if best is None:
            why.append(f"no free slot for {s.tenant} away from {victim} ({s.cause})")
            continue
        p, pen = best
        return Move(s.tenant, st.placement, p, pen, before,
                    f"move {s.tenant} {st.placement} -> {p} (penalty {before:.2f} -> {pen:.2f}, "
                    f"off {s.relation} with {victim})")
    if not may_restart(victim):
        why.append(f"{victim} is not restartable")
        return "placement: " + "; ".join(why)
    if victim_block is not None:
        why.append(f"not moving {victim} yet: {victim_block}")
        return "placement: " + "; ".join(why)
    if failed(f"place {victim}"):
        why.append(f"moving {victim} failed its trial recently")
        return "placement: " + "; ".join(why)
    if vt.placement.gpu in blocked_gpus:
        return f"placement: GPU {vt.placement.gpu} of {victim} is busy"
    before = scorer.penalty(vt, vt.placement)
    others = [snapshot.tenants[s.tenant].placement for s in suspects
              if s.tenant is not None and snapshot.tenants[s.tenant].placement is not None]
    cause = diag.cause

    def ok(p: Placement) -> bool:
        return all(o is None or _separated(topo, p, o, cause) for o in others)

    best = _best(scorer, vt, free, need=_size(topo, vt.placement), ok=ok)
    if best is None or best[1] > (1.0 - MIN_GAIN) * before:
        why.append(f"no slot for {victim} better than its own (penalty {before:.2f})")
        return "placement: " + "; ".join(why)
    p, pen = best
    return Move(victim, vt.placement, p, pen, before,
                f"move {victim} {vt.placement} -> {p} (penalty {before:.2f} -> {pen:.2f})")


def _away_from(topo: Topology, other: Placement, cause: str) -> Callable[[Placement], bool]:
    def ok(p: Placement) -> bool:
        return _separated(topo, p, other, cause)

    return ok


def _healthy(snapshot: Snapshot, gpu: int) -> bool:
    sample = snapshot.gpu(gpu)
    return sample is None or sample.healthy


def _best(
    scorer: Scorer,
    m: TenantSample,
    free: list[Placement],
    *,
    need: int,
    ok: Callable[[Placement], bool],
) -> tuple[Placement, float] | None:
    scored = [
        (scorer.penalty(m, p), p.gpu, p.gi_id if p.gi_id is not None else -1, p)
        for p in free
        if _size(scorer.topo, p) >= need and ok(p)
    ]
    if not scored:
        return None
    pen, _, _, p = min(scored)
    return p, pen
