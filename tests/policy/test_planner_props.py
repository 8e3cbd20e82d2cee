"""Property tests for the planners: every proposal is valid, and plans converge after an
interruption (re-planning after any prefix of a multi-step action never stacks a second
disruptive action on the same GPU, and what is proposed afterwards is valid again)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuguardd.model.actions import Migrate, MigResize, Outcome, Result
from gpuguardd.model.snapshot import Placement, Snapshot, TenantClass, TenantSample
from gpuguardd.model.topology import GpuInfo, MigInstance, Topology
from gpuguardd.policy import LadderState, absorb, decide
from gpuguardd.policy.diagnosis import Diagnosis, Suspect
from gpuguardd.policy.mig import COMPUTE_SLICES, SHAPES, compute_of, growths, used_compute
from gpuguardd.policy.placement import free_placements, plan_move

from .fakes import p4d
from .scenes import Member, Scene
from .test_levers import cfg

PROFILES = [(1, 1), (1, 1), (1, 1), (2, 2), (3, 4), (4, 4), (7, 8)]


@st.composite
def layouts(draw: st.DrawFn, gpu: int = 0) -> tuple[MigInstance, ...]:
    """A valid MIG layout: random standard profiles at valid, non-overlapping starts."""
    taken: set[int] = set()
    compute = 0
    out: list[MigInstance] = []
    for _ in range(draw(st.integers(1, 7))):
        c, size = draw(st.sampled_from(PROFILES))
        starts = [s for s in SHAPES[(c, size)]
                  if not taken & set(range(s, s + size)) and s + size <= 8]
        if not starts or compute + c > COMPUTE_SLICES:
            continue
        s = draw(st.sampled_from(starts))
        taken |= set(range(s, s + size))
        compute += c
        out.append(MigInstance(gpu, len(out) + 1, f"{c}g.{5 * size}gb", s, size, f"M{len(out)}"))
    return tuple(out)


def _valid_layout(gpu: GpuInfo) -> None:
    slices: set[int] = set()
    for i in gpu.instances:
        c = compute_of(i.profile)
        assert c is not None and i.start in SHAPES[(c, i.size)]
        mine = set(range(i.start, i.start + i.size))
        assert not slices & mine and max(mine) < 8
        slices |= mine
    assert used_compute(gpu) <= COMPUTE_SLICES


@given(layouts())
def test_every_growth_is_a_valid_larger_placement(layout: tuple[MigInstance, ...]) -> None:
    topo = p4d({0: layout})
    gpu = topo.gpu(0)
    for inst in layout:
        for g in growths(gpu, inst):
            assert (compute_of(g.to.name) or 0) > (compute_of(inst.profile) or 0)
            kept = tuple(i for i in gpu.instances if i.gi_id != inst.gi_id)
            new = MigInstance(0, 99, g.to.name, g.start, g.to.size, "new")
            grown = replace(gpu, instances=(*kept, new))
            _valid_layout(grown)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[Topology, dict[str, Placement], frozenset[int]]:
    mig = {g: draw(layouts(g)) for g in draw(st.sets(st.integers(0, 7), max_size=4))}
    topo = p4d(mig)
    slots = [Placement(g.index, i.gi_id) for g in topo.gpus for i in g.instances]
    slots += [Placement(g.index) for g in topo.gpus if not g.mig_enabled]
    chosen = draw(st.lists(st.sampled_from(slots), min_size=2, max_size=6, unique=True))
    names = ["t1", "t2", "t3", "t4", "t5", "t6"]
    busy = draw(st.sets(st.integers(0, 7), max_size=3))
    return topo, dict(zip(names, chosen, strict=False)), frozenset(busy)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(hosts(), st.sampled_from(["pcie", "compute", "membw"]), st.booleans())
def test_placements_are_free_fitting_separated_and_avoid_busy_gpus(
    host: tuple[Topology, dict[str, Placement], frozenset[int]], cause: str, victim_moves: bool
) -> None:
    topo, where, busy = host
    tenants = {
        n: TenantSample(n, TenantClass.LATENCY if n == "t1" else TenantClass.BATCH, True, p,
                        restartable=True)
        for n, p in where.items()
    }
    snap = Snapshot(now=1.0, topology=topo, tenants=tenants)
    diag = Diagnosis(cause, (Suspect("t2", cause, "PCIe", "x", 1e9, 0.5, 0.9, 0.4),))
    mv = plan_move(
        "t1", diag, snap, [], protected=frozenset({"t1"}),
        may_restart=lambda n: victim_moves or n != "t1", blocked_gpus=busy, taken=set(),
        failed=lambda _: False,
    )
    if isinstance(mv, str):
        return
    occupied = {p for p in where.values()}
    assert mv.to not in occupied and mv.to in free_placements(snap, set())
    assert mv.to.gpu not in busy and mv.source.gpu not in busy
    assert mv.tenant in ("t1", "t2") and mv.source == where[mv.tenant]
    other = where["t2"] if mv.tenant == "t1" else where["t1"]
    if cause == "pcie":
        assert not topo.share_switch(mv.to.gpu, other.gpu) and mv.to.gpu != other.gpu
    else:
        assert mv.to != other and (mv.to.gpu != other.gpu or mv.to.gi_id is not None)
    size = {(i.gpu, i.gi_id): i.size for g in topo.gpus for i in g.instances}
    need = size.get((mv.source.gpu, mv.source.gi_id or -1), 8) if mv.source.gi_id else 8
    got = size.get((mv.to.gpu, mv.to.gi_id or -1), 8) if mv.to.gi_id else 8
    assert got >= need


class MigHost:
    """Applies MigResize as the executor would, in four resumable steps."""

    STEPS = ("stop", "destroy", "create", "start")

    def __init__(self, scene: Scene):
        self.scene = scene
        self.todo: list[tuple[MigResize, int]] = []  # (action, next step index)
        self.running = True

    def begin(self, a: MigResize) -> None:
        self.todo.append((a, 0))

    def run(self, tick: int, prefix: int, pause: int, rate: int, issued_at: int) -> None:
        """``prefix`` steps at once, then a stall of ``pause`` ticks, then ``rate`` per tick."""
        if tick == issued_at:
            self.step(prefix)
        elif tick > issued_at + pause:
            self.step(rate)

    def step(self, n: int) -> None:
        """Run up to ``n`` steps of the in-flight plan (an interruption stops early)."""
        while n > 0 and self.todo:
            a, k = self.todo[0]
            topo = self.scene.topology
            gpu = topo.gpu(a.gpu)
            step = self.STEPS[k]
            if step == "stop":
                self.running = False
            elif step == "destroy":
                    gpu = replace(gpu, instances=tuple(i for i in gpu.instances
                                                   if i.gi_id != a.gi_id))
            elif step == "create":
                size = {c: s for (c, s) in SHAPES}[compute_of(a.to_profile) or 1]
                gpu = replace(gpu, instances=(*gpu.instances, MigInstance(
                    a.gpu, 50 + k, a.to_profile, a.start, size, "new")))
                for m in self.scene.members:
                    if m.name == a.tenant:
                        m.placement = Placement(a.gpu, 50 + k)
            elif step == "start":
                self.running = True
            self.scene.topology = replace(topo, gpus=tuple(
                gpu if g.index == a.gpu else g for g in topo.gpus))
            _valid_layout(gpu)
            self.todo[0] = (a, k + 1)
            if k + 1 == len(self.STEPS):
                self.todo.pop(0)
            n -= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3), st.integers(1, 40), st.integers(1, 4))
def test_mig_resize_converges_after_interruption(
    prefix: int, pause_ticks: int, rate: int
) -> None:
    """The executor runs ``prefix`` steps, stalls ``pause_ticks`` ticks, then resumes at
    ``rate`` steps per tick. Meanwhile the ladder re-plans every tick from the snapshot."""
    layout = (MigInstance(0, 1, "1g.5gb", 0, 1, "a"), MigInstance(0, 2, "2g.10gb", 2, 2, "b"))
    scene = Scene([Member("t1", TenantClass.LATENCY, Placement(0, 1))], antagonist="none",
                  topology=p4d({0: layout}))
    host = MigHost(scene)
    c = cfg("mig", victim_restartable=True, eval_period_s=4.0, level_dwell_s=0.0)
    state = LadderState.initial(c)
    issued: list[MigResize] = []
    issued_at = -1
    for tick in range(120):
        snap = scene.snapshot()
        t1 = snap.tenants["t1"]
        snap = replace(snap, tenants={**snap.tenants, "t1": replace(t1, running=host.running)},
                       busy_gpus=frozenset({0}) if host.todo and tick % 3 == 0 else frozenset())
        state, d = decide(state, snap, c)
        for a in d.actions:
            assert isinstance(a, MigResize), a
            assert not host.todo, "a second disruptive action while one is in flight"
            gpu = snap.topology.gpu(a.gpu)
            assert a.gi_id in {i.gi_id for i in gpu.instances}
            issued.append(a)
            host.begin(a)
        state = absorb(state, [Outcome(a, Result.APPLIED) for a in d.actions], snap.now)
        if d.actions:
            issued_at = tick
        host.run(tick, prefix, pause_ticks, rate, issued_at)
    assert issued, "the victim violates on its 1g instance with a free slice next to it"
    assert not host.todo, "every plan finished"
    assert len(issued) <= c.policy.mig_reconfigs_per_hour
    _valid_layout(scene.topology.gpu(0))
    final = {i.profile for i in scene.topology.gpu(0).instances}
    assert final & {"2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"}
    assert not isinstance(issued[0], Migrate)
