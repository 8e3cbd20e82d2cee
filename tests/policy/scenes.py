"""Hand-built multi-tick scenes for lever tests: a victim whose tail follows one neighbour."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpuguardd.config import Config
from gpuguardd.model.actions import Action, IoRelease, IoThrottle, Migrate, MpsLimit
from gpuguardd.model.snapshot import (
    GpuSample,
    HostSignals,
    IoCounters,
    Placement,
    Snapshot,
    TenantClass,
    TenantSample,
)
from gpuguardd.model.topology import MigInstance, Topology
from gpuguardd.policy import Decision, LadderState, absorb, decide

from .fakes import NVME, lat, p4d


def mig_layout(gpu: int, layout: Sequence[tuple[str, int, int]]) -> tuple[MigInstance, ...]:
    """(profile, start, size) per instance, gi ids 1.. in order."""
    return tuple(
        MigInstance(gpu, gi, prof, start, size, f"MIG-{gpu}-{gi}")
        for gi, (prof, start, size) in enumerate(layout, start=1)
    )


@dataclass
class Member:
    name: str
    cls: TenantClass
    placement: Placement | None
    restartable: bool = True
    io_bps: float = 0.0  # disk read rate while "on"


@dataclass
class Scene:
    """Ticks every 2 s. ``on(t)`` says whether the antagonist is active; the victim's TTFT is
    ``calm_s`` while it is off and ``hot_s`` while it is on. The antagonist's GPU shows SM/DRAM
    activity and PCIe bytes when on; its cgroup shows disk reads."""

    members: list[Member]
    antagonist: str
    victim: str = "t1"
    topology: Topology = field(default_factory=p4d)
    calm_s: float = 0.008
    hot_s: float = 0.030
    on: Callable[[float], bool] = lambda t: True
    t: float = 0.0
    io: dict[str, int] = field(default_factory=dict)
    pcie: dict[int, int] = field(default_factory=dict)
    #: an action on the antagonist (throttle, MPS limit, move) relieves the victim
    relieved: bool = False

    def apply(self, a: Action) -> None:
        if isinstance(a, IoThrottle | Migrate) or (isinstance(a, MpsLimit) and a.pct):
            if getattr(a, "tenant", None) == self.antagonist:
                self.relieved = True
        elif isinstance(a, IoRelease | MpsLimit) and a.tenant == self.antagonist:
            self.relieved = False
        if isinstance(a, Migrate):
            for m in self.members:
                if m.name == a.tenant:
                    m.placement = a.to

    def snapshot(self) -> Snapshot:
        self.t += 2.0
        hot = self.on(self.t)
        tenants: dict[str, TenantSample] = {}
        sm: dict[int, float] = {}
        for m in self.members:
            rate = m.io_bps if (m.name != self.antagonist or hot) else 0.0
            self.io[m.name] = self.io.get(m.name, 0) + int(rate * 2)
            if m.placement is not None:
                g = m.placement.gpu
                self.pcie[g] = self.pcie.get(g, 0) + int(rate * 2)
                busy = 0.95 if (m.name == self.antagonist and hot) else 0.2
                sm[g] = max(sm.get(g, 0.0), busy)
            latency = lat([])
            if m.name == self.victim:
                x = self.hot_s if hot and not self.relieved else self.calm_s
                latency = lat([x * (0.9 + 0.001 * i) for i in range(100)])
            tenants[m.name] = TenantSample(
                m.name, m.cls, True, m.placement, latency=latency,
                io=(IoCounters(NVME, rbytes=self.io[m.name]),) if m.io_bps else (),
                restartable=m.restartable,
            )
        gpus = tuple(
            GpuSample(g.index, sm_util=sm.get(g.index, 0.0), mem_util=sm.get(g.index, 0.0) / 2,
                      pcie_tx_bytes=0, pcie_rx_bytes=self.pcie.get(g.index, 0))
            for g in self.topology.gpus
        )
        return Snapshot(now=self.t, topology=self.topology, gpus=gpus, tenants=tenants,
                        host=HostSignals(irqs_per_cpu={c: int(self.t * 50) for c in range(96)}))


def drive(
    scene: Scene, cfg: Config, ticks: int, state: LadderState | None = None
) -> tuple[LadderState, list[tuple[float, Decision]]]:
    from gpuguardd.model.actions import Outcome, Result

    state = state if state is not None else LadderState.initial(cfg)
    log = []
    for _ in range(ticks):
        snap = scene.snapshot()
        state, d = decide(state, snap, cfg)
        for a in d.actions:
            scene.apply(a)
        state = absorb(state, [Outcome(a, Result.APPLIED) for a in d.actions], snap.now)
        log.append((snap.now, d))
    return state, log


def actions(log: list[tuple[float, Decision]]) -> list[tuple[Action, str]]:
    return [(a, r) for _, d in log for a, r in zip(d.actions, d.reasons, strict=True)]
