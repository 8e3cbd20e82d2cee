"""decide/absorb never crash on odd snapshots, and never act on a protected tenant."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuguardd.config import Config, PolicyConfig, SloConfig, TenantConfig
from gpuguardd.model.actions import IoThrottle, Migrate, MigResize, MpsLimit, Outcome, Result
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
from gpuguardd.policy import LadderState, absorb, decide

from .fakes import NVME, p4d
from .scenes import mig_layout

NAMES = ["a", "b", "c", "d", "e"]

placements = st.sampled_from([
    Placement(0, 1), Placement(0, 2), Placement(1), Placement(1), Placement(2), Placement(4),
    None,
    Placement(9),  # a GPU the topology does not have
    Placement(0, 4),  # a MIG instance that does not exist
    Placement(0),  # a MIG GPU as a whole
])


@st.composite
def ticks(draw: st.DrawFn) -> list[Snapshot]:
    topo = p4d({0: mig_layout(0, [("1g.5gb", 0, 1), ("2g.10gb", 2, 2)])})
    classes = {n: draw(st.sampled_from([TenantClass.LATENCY, TenantClass.BATCH])) for n in NAMES}
    where = {n: draw(placements) for n in NAMES}
    out = []
    io = dict.fromkeys(NAMES, 0)
    for i in range(draw(st.integers(1, 25))):
        tenants = {}
        for n in NAMES:
            step = draw(st.sampled_from([0, 4 * 10**9, 6 * 10**9, 6 * 10**9, -10**9]))
            io[n] = max(0, io[n] + step)  # a counter may also go backwards (a reset)
            lat = LatencyWindow(
                ttft=FrozenSketch.of(draw(st.lists(st.floats(0.0, 5.0), max_size=60))),
                ok=draw(st.sampled_from([True, True, True, False])),
            )
            tenants[n] = TenantSample(
                n, classes[n], draw(st.sampled_from([True, True, True, False])), where[n],
                latency=lat,
                io=(IoCounters(NVME, rbytes=io[n]),), restartable=draw(st.booleans()),
            )
        gpus = tuple(GpuSample(g, sm_util=draw(st.none() | st.floats(0, 1)),
                               pcie_rx_bytes=draw(st.none() | st.integers(0, 10**12)),
                               pcie_tx_bytes=0) for g in range(8))
        busy = frozenset(draw(st.sets(st.integers(0, 7), max_size=2)))
        out.append(Snapshot(now=2.0 * (i + 1), topology=topo, gpus=gpus, tenants=tenants,
                            host=HostSignals(irqs_per_cpu={0: i * 1000}), busy_gpus=busy))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks(), st.sampled_from(["full", "guards", "placement", "mig"]),
       st.sampled_from(list(Result)))
def test_decide_is_total_and_never_acts_on_a_protected_tenant(
    snaps: list[Snapshot], policy: str, result: Result
) -> None:
    cfg = Config(
        policy=PolicyConfig(name=policy, restart_outage_s=0.0),  # type: ignore[arg-type]
        tenants=tuple(TenantConfig(name=n, tenant_class="latency",
                                   slo=SloConfig(ttft_p99_ms=15.0)) for n in NAMES[:2]),
    )
    state = LadderState.initial(cfg)
    for snap in snaps:
        state, d = decide(state, snap, cfg)
        assert len(d.actions) == len(d.reasons) and all(d.reasons)
        protected = {n for n, t in snap.tenants.items() if t.tenant_class == TenantClass.LATENCY}
        protected |= {"a", "b"}
        for a in d.actions:
            if isinstance(a, IoThrottle) or (isinstance(a, MpsLimit) and a.pct is not None):
                assert a.tenant not in protected
            if isinstance(a, Migrate | MigResize):
                assert a.tenant in snap.tenants
        state = absorb(state, [Outcome(a, result) for a in d.actions], snap.now)
