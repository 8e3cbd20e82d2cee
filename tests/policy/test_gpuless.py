"""A host without GPUs (require_gpu = false): the only relation is a shared block device."""

from __future__ import annotations

import random

from gpuguardd.config import Config, PolicyConfig, SloConfig, TenantConfig
from gpuguardd.model.actions import IoRelease, IoThrottle, Outcome, Result
from gpuguardd.model.snapshot import IoCounters, Snapshot, TenantClass, TenantSample
from gpuguardd.model.topology import BlockDevice, Topology
from gpuguardd.policy import LadderState, absorb, decide

from .fakes import lat

DISK = "8:0"
TOPO = Topology(block_devices=(BlockDevice("sda", 8, 0),))
CFG = Config(policy=PolicyConfig(name="guards"), tenants=(
    TenantConfig(name="victim", tenant_class="latency", slo=SloConfig(ttft_p99_ms=3.0)),
    TenantConfig(name="dd", tenant_class="batch"),
    TenantConfig(name="idle", tenant_class="batch"),
))


def run(seconds: float, antagonist_on: bool = True):
    rng = random.Random(3)
    written = {"victim": 0, "dd": 0, "idle": 0}
    cap: int | None = None
    state = LadderState.initial(CFG)
    throttles: list[tuple[float, IoThrottle, str]] = []
    t = 0.0
    while t < seconds:
        t += 1.0
        dd_bps = (min(2e9, cap) if cap is not None else 2e9) if antagonist_on and t > 10 else 0
        written["victim"] += 400_000
        written["dd"] += int(dd_bps)
        written["idle"] += 1_000_000
        # the victim's synchronous writes queue behind the antagonist's (~3 ms per GB/s)
        base = 0.0005 + 0.003 * dd_bps / 1e9
        samples = [base * (0.7 + 0.6 * rng.random()) for _ in range(100)]
        tenants = {
            "victim": TenantSample("victim", TenantClass.LATENCY, True, None, lat(samples),
                                   io=(IoCounters(DISK, wbytes=written["victim"]),)),
            "dd": TenantSample("dd", TenantClass.BATCH, True, None,
                               io=(IoCounters(DISK, wbytes=written["dd"]),)),
            "idle": TenantSample("idle", TenantClass.BATCH, True, None,
                                 io=(IoCounters("8:16", wbytes=written["idle"]),)),
        }
        state, d = decide(state, Snapshot(t, TOPO, tenants=tenants), CFG)
        outcomes = []
        for a, reason in zip(d.actions, d.reasons, strict=True):
            if isinstance(a, IoThrottle):
                cap = a.limit.wbps
                throttles.append((t, a, reason))
            elif isinstance(a, IoRelease):
                cap = None
            outcomes.append(Outcome(a, Result.APPLIED))
        state = absorb(state, outcomes, t)
    return state, throttles, cap


def test_a_gpuless_victim_gets_the_antagonist_on_its_disk_throttled():
    state, throttles, cap = run(60)
    assert throttles, state.tenants["victim"].last_reason
    _t, first, reason = throttles[0]
    assert first.tenant == "dd" and first.device == DISK and first.limit.wbps is not None
    assert "cause io" in reason and "same disk 8:0" in reason
    assert all(a.tenant == "dd" for _, a, _ in throttles)  # never the idle tenant on sdb
    assert cap is not None and cap < 2e9
    assert not state.tenants["victim"].violating


def test_no_antagonist_no_action():
    _, throttles, _ = run(40, antagonist_on=False)
    assert throttles == []
