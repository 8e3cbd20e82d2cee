"""Levels 2-4 and the guards around them, table by table."""

from __future__ import annotations

import pytest

from gpuguardd.config import Config, PolicyConfig, SloConfig, TenantConfig
from gpuguardd.model.actions import IoRelease, IoThrottle, Migrate, MigResize, MpsLimit
from gpuguardd.model.snapshot import Placement, TenantClass

from .fakes import p4d
from .scenes import Member, Scene, actions, drive, mig_layout

L, B = TenantClass.LATENCY, TenantClass.BATCH


def cfg(policy: str = "full", victim_restartable: bool = False,
        batch_restartable: bool = True, **knobs: float) -> Config:
    return Config(
        policy=PolicyConfig(name=policy, **knobs),  # type: ignore[arg-type]
        tenants=(
            TenantConfig(name="t1", tenant_class="latency", slo=SloConfig(ttft_p99_ms=15.0),
                         restartable=victim_restartable),
            TenantConfig(name="t2", tenant_class="batch", restartable=batch_restartable),
            TenantConfig(name="t3", tenant_class="batch", restartable=batch_restartable),
        ),
    )


def toggling(t: float) -> bool:
    """On for 40 s, off for 20 s: enough variation for a correlation."""
    return (t % 60.0) < 40.0


# -- level 2: MPS ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("restartable", "expect_mps"),
    [(True, True), (False, False)],
)
def test_compute_suspect_on_the_victims_gpu_gets_an_mps_limit_only_if_restartable(
    restartable: bool, expect_mps: bool
) -> None:
    scene = Scene(
        [Member("t1", L, Placement(2)), Member("t3", B, Placement(2))],  # no MIG: shared SMs
        antagonist="t3", on=toggling,
    )
    # on 40 s / off 20 s: the first toggles give the correlation that a shared pool's SM
    # activity needs before it may blame the neighbour; at t = 70 the neighbour is on again
    state, log = drive(scene, cfg("guards", batch_restartable=restartable), 35)
    mps = [(a, r) for a, r in actions(log) if isinstance(a, MpsLimit) and a.pct is not None]
    assert bool(mps) is expect_mps
    if expect_mps:
        a, reason = mps[0]
        assert a.tenant == "t3" and a.pct == 50 and a.expires_at is not None
        assert "cause compute" in reason and "same GPU 2" in reason
        assert state.tenants["t1"].level >= 2
    else:
        assert "not restartable" in state.tenants["t1"].last_reason
    assert not [a for a, _ in actions(log) if isinstance(a, IoThrottle)]


def test_mig_isolated_neighbour_is_not_a_compute_suspect() -> None:
    topo = p4d({0: mig_layout(0, [("1g.5gb", 0, 1), ("1g.5gb", 1, 1), ("2g.10gb", 2, 2)])})
    scene = Scene(
        [Member("t1", L, Placement(0, 1)), Member("t3", B, Placement(0, 3))],
        antagonist="t3", on=toggling, topology=topo,
    )
    _, log = drive(scene, cfg("guards"), 60)
    assert not [a for a, _ in actions(log) if isinstance(a, MpsLimit)]


# -- level 3: placement ---------------------------------------------------------------------

def test_placement_moves_the_pcie_heavy_batch_tenant_off_the_victims_switch() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9),
         Member("t3", B, Placement(6), io_bps=2e9)],
        antagonist="t2", on=toggling,
    )
    state, log = drive(scene, cfg("placement"), 30)
    moves = [(a, r) for a, r in actions(log) if isinstance(a, Migrate)]
    assert len(moves) == 1
    a, reason = moves[0]
    assert a.tenant == "t2" and a.source == Placement(1)
    topo = scene.topology
    assert not topo.share_switch(a.to.gpu, 0)
    assert a.to.gpu not in (0, 1, 6), "a free GPU, and not the one behind t3's busy switch"
    assert a.to.gpu != 7, "GPU 7 shares a switch with t3's 2 GB/s"
    assert not topo.share_root(a.to.gpu, 0), "GPUs 2-3 share t1's root: scored worse"
    assert "move t2 gpu1 ->" in reason and "penalty" in reason
    assert state.tenants["t1"].level == 3


def test_placement_moves_the_victim_when_the_suspect_may_not_restart() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9,
                                               restartable=False)],
        antagonist="t2", on=toggling,
    )
    _, log = drive(scene, cfg("placement", victim_restartable=True, batch_restartable=False), 40)
    moves = [a for a, _ in actions(log) if isinstance(a, Migrate)]
    assert [m.tenant for m in moves] == ["t1"]
    assert not scene.topology.share_switch(moves[0].to.gpu, 1)


def test_no_placement_when_nobody_may_restart() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9)],
        antagonist="t2", on=toggling,
    )
    state, log = drive(scene, cfg("placement", batch_restartable=False), 40)
    assert not [a for a, _ in actions(log) if isinstance(a, Migrate)]
    assert "not restartable" in state.tenants["t1"].last_reason


def test_placement_respects_busy_gpus() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9)],
        antagonist="t2", on=toggling,
    )
    from dataclasses import replace

    from gpuguardd.policy import LadderState, absorb, decide

    c = cfg("placement")
    state = LadderState.initial(c)
    for _ in range(40):
        snap = replace(scene.snapshot(), busy_gpus=frozenset({1}))
        state, d = decide(state, snap, c)
        state = absorb(state, [], snap.now)
        assert not d.actions, "the suspect's GPU is reconfiguring: no move from it"


# -- level 4: MIG resize --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("layout", "expect"),
    [
        # 1g at 0, slice 1 free: grow in place to 2g at 0
        ([("1g.5gb", 0, 1), ("2g.10gb", 2, 2), ("3g.20gb", 4, 4)], ("2g.10gb", 0)),
        # slices 0-1 taken by others, 1g at 2, slice 3 free: 2g at 2
        ([("2g.10gb", 0, 2), ("1g.5gb", 2, 1), ("3g.20gb", 4, 4)], ("2g.10gb", 2)),
        # no free slice: no resize
        ([("1g.5gb", 0, 1), ("1g.5gb", 1, 1), ("2g.10gb", 2, 2), ("3g.20gb", 4, 4)], None),
    ],
)
def test_mig_resize_grows_the_victim_into_free_adjacent_slices(
    layout: list[tuple[str, int, int]], expect: tuple[str, int] | None
) -> None:
    topo = p4d({0: mig_layout(0, layout)})
    gi = next(i for i, (p, _, _) in enumerate(layout, start=1) if p.startswith("1g"))
    scene = Scene([Member("t1", L, Placement(0, gi))], antagonist="none",
                  topology=topo, on=lambda t: True)
    state, log = drive(scene, cfg("mig", restart_outage_s=0.0), 20)
    resizes = [(a, r) for a, r in actions(log) if isinstance(a, MigResize)]
    if expect is None:
        assert not resizes
        assert "no free slices" in state.tenants["t1"].last_reason
    else:
        assert len(resizes) == 1
        a, reason = resizes[0]
        assert (a.to_profile, a.start, a.gi_id, a.from_profile) == (*expect, gi, "1g.5gb")
        assert "cause unknown" in reason and "1/4 this hour" in reason


def test_mig_resize_budget_per_gpu_per_hour() -> None:
    topo = p4d({0: mig_layout(0, [("1g.5gb", 0, 1), ("2g.10gb", 2, 2)])})
    scene = Scene([Member("t1", L, Placement(0, 1))], antagonist="none", topology=topo)
    state, log = drive(scene, cfg("mig", mig_reconfigs_per_hour=0, restart_outage_s=0.0), 20)
    assert not [a for a, _ in actions(log) if isinstance(a, MigResize)]
    assert "reconfigurations this hour" in state.tenants["t1"].last_reason


def test_mig_resize_is_not_repeated_while_pending() -> None:
    topo = p4d({0: mig_layout(0, [("1g.5gb", 0, 1), ("2g.10gb", 2, 2)])})
    scene = Scene([Member("t1", L, Placement(0, 1))], antagonist="none", topology=topo)
    _, log = drive(scene, cfg("mig", eval_period_s=5.0, level_dwell_s=0.0,
                              restart_outage_s=0.0), 100)
    # the host never completes the resize (the snapshot keeps the old layout): the GPU stays
    # blocked until the pending action times out, and the budget caps the retries
    resizes = [a for a, _ in actions(log) if isinstance(a, MigResize)]
    assert 1 <= len(resizes) <= 2


def test_the_victim_is_only_disrupted_once_its_missed_requests_exceed_the_outage_cost() -> None:
    """Ski rental: 50 rps all above the SLO miss 100 requests per 2 s tick; a 40 s outage
    delays 40 x 50 = 2000 requests, so the resize comes after ~20 violating ticks, not 3."""
    topo = p4d({0: mig_layout(0, [("1g.5gb", 0, 1), ("2g.10gb", 2, 2)])})
    scene = Scene([Member("t1", L, Placement(0, 1))], antagonist="none", topology=topo)
    c = cfg("mig", restart_outage_s=40.0)
    state, log = drive(scene, c, 15)
    assert not actions(log)
    assert "ski rental" in state.tenants["t1"].last_reason
    state, log = drive(scene, c, 15, state)
    resizes = [(t, a) for t, d in log for a in d.actions if isinstance(a, MigResize)]
    assert len(resizes) == 1
    assert 40.0 <= resizes[0][0] <= 46.0


def test_a_throttle_is_released_when_its_target_leaves_the_victims_link() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9)],
        antagonist="t2", on=lambda t: True,
    )
    c = cfg("guards")
    state, log = drive(scene, c, 5)
    assert [a for a, _ in actions(log) if isinstance(a, IoThrottle)]
    scene.members[1].placement = Placement(6)  # moved by someone else: other switch and NUMA
    state, log = drive(scene, c, 2, state)
    released = [(a, r) for a, r in actions(log) if isinstance(a, IoRelease)]
    assert len(released) == 1 and "no longer shares the pcie path with t1" in released[0][1]
    assert not state.levers


def test_mps_trial_waits_for_the_suspects_restart() -> None:
    from dataclasses import replace as dc_replace

    from gpuguardd.model.actions import Outcome, Result
    from gpuguardd.policy import LadderState, absorb, decide

    scene = Scene([Member("t1", L, Placement(2)), Member("t3", B, Placement(2))],
                  antagonist="t3", on=toggling)
    c = cfg("guards")
    state = LadderState.initial(c)
    issued = None
    down_until = None
    for _ in range(80):
        snap = scene.snapshot()
        if down_until is not None and snap.now < down_until:
            t3 = snap.tenants["t3"]
            snap = dc_replace(snap, tenants={**snap.tenants, "t3": dc_replace(t3, running=False)})
        state, d = decide(state, snap, c)
        for a in d.actions:
            scene.apply(a)
            if isinstance(a, MpsLimit) and a.pct is not None and issued is None:
                issued, down_until = snap.now, snap.now + 30.0
        state = absorb(state, [Outcome(a, Result.APPLIED) for a in d.actions], snap.now)
        trial = state.victims["t1"].trial
        if issued is not None and down_until is not None and snap.now < down_until:
            assert trial is not None and "t3" in state.pending, "judged only once t3 is back"
    assert issued is not None


def test_a_joint_throttle_that_did_not_help_is_not_retried_on_either_suspect() -> None:
    scene = Scene(
        [Member("t1", L, Placement(0)), Member("t2", B, Placement(1), io_bps=3e9),
         Member("t3", B, Placement(1), io_bps=3e9)],
        antagonist="nobody", on=lambda t: True,  # the tail does not depend on them
    )
    state, log = drive(scene, cfg("guards"), 60)
    firsts = [a for a, r in actions(log) if isinstance(a, IoThrottle) and "renew" not in r
              and "back to" not in r and "tighten" not in r]
    assert sorted(a.tenant for a in firsts) == ["t2", "t3"], "one joint throttle, never again"
    assert {"io.max t2", "io.max t3"} <= set(state.victims["t1"].failed)
