"""SimHost: levers with real costs and failure modes, and observations as hardware shows them."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping

import numpy as np
import pytest

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.sketch import FrozenSketch
from gpuguardd.model.snapshot import Placement, Snapshot
from gpuguardd.sim import SimHost, load_scenario
from gpuguardd.sim.scenario import loads

SHARED_GPU = """
[host]
preset = "a100-pcie"
[[tenant]]
name = "llm"
kind = "inference"
gpu = 0
model = "Qwen3-1.7B"
slo = { ttft_p99_ms = 50.0 }
arrivals = { rate_rps = 5 }
prompt_tokens = 512
output_tokens = 32
[[tenant]]
name = "train"
kind = "training"
gpu = 0
batch_bytes = 0
"""

H100_MIG = """
[host]
preset = "h100"
mig = ["3g.40gb", "2g.20gb", "1g.10gb"]
[[tenant]]
name = "llm"
kind = "inference"
instance = 0
model = "Qwen3-4B"
slo = { ttft_p99_ms = 100.0 }
arrivals = { rate_rps = 10 }
[[tenant]]
name = "train"
kind = "training"
instance = 1
"""


def nn(seconds: float = 60, seed: int | None = None) -> SimHost:
    return load_scenario("noisy-neighbor", seconds=seconds, seed=seed).build_host()


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_results_different_seed_different_samples() -> None:
    runs = []
    for seed in (3, 3, 4):
        host = nn(90, seed)
        host.run(90, 2.0)
        runs.append(json.dumps(host.results(), sort_keys=True))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


# -- observations --------------------------------------------------------------------------------

_ALLOWED_LEAVES = (int, float, str, bool, type(None), enum.Enum)


def _walk(obj: object, path: str) -> None:
    """Every value in a snapshot is plain data or a gpuguardd.model dataclass."""
    if dataclasses.is_dataclass(obj):
        assert type(obj).__module__.startswith("gpuguardd.model."), path
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _walk(k, path)
            _walk(v, f"{path}[{k}]")
    elif isinstance(obj, tuple | list | frozenset | set):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]")
    else:
        assert isinstance(obj, _ALLOWED_LEAVES), (path, type(obj))


def test_snapshot_holds_only_hardware_level_data() -> None:
    host = nn(130)
    snaps = [host.observe(float(t)) for t in range(2, 131, 2)]
    for s in snaps[::10]:
        _walk(s, "snapshot")
    last = snaps[-1]
    assert isinstance(last, Snapshot) and last.now == 130.0
    # A100 in MIG mode: NVML has no utilisation; GPU 1 is not in MIG mode
    g0, g1 = last.gpu(0), last.gpu(1)
    assert g0 is not None and g1 is not None
    assert g0.sm_util is None and g0.mem_util is None
    assert g1.sm_util is not None and g1.sm_util < 0.05  # T3 is off until 240 s
    assert last.instances == ()  # no GPM before Hopper
    rx = [s.gpu(0).pcie_rx_bytes for s in snaps]  # type: ignore[union-attr]
    assert all(b is not None for b in rx)
    assert rx == sorted(rx)  # type: ignore[type-var]
    # T1 alone loads ~0.56 GB/s of KV (30 req/s x 0.9 hits x ~182 tokens x 112 KiB); T2 (ETL,
    # same GPU) adds 2.5 GB/s from 60 s on: GPU 0's host-to-device byte counter shows both
    before = (rx[28] - rx[0]) / 56  # type: ignore[operator]
    during = (rx[-1] - rx[31]) / 66  # type: ignore[operator]
    assert 0.4e9 < before < 0.75e9 and 2.8e9 < during < 3.4e9


def test_latency_windows_and_io_counters() -> None:
    host = nn(100)
    host.observe(60.0)
    s1 = host.observe(62.0)
    win = s1.tenants["t1"].latency
    assert isinstance(win.ttft, FrozenSketch) and 30 < win.ttft.count < 100
    p99 = win.ttft.quantile(0.99)
    assert p99 is not None and 0.001 < p99 < 0.05
    s2 = host.observe(62.0)  # nothing new since the last look
    assert s2.tenants["t1"].latency.ttft.count == 0
    s3 = host.observe(100.0)
    io = s3.tenants["t2"].io
    assert [c.device for c in io] == ["259:0"]
    assert io[0].rbytes == pytest.approx(2.5e9 * 40, rel=0.05)
    assert io[0].rios == io[0].rbytes // 2**20
    assert s3.host.disk_bytes["259:0"] == io[0].rbytes
    assert s3.tenants["t1"].io == () and s3.tenants["t1"].work_done is not None
    # NVMe completions land on NUMA node 0's first CPUs, above the timer ticks
    irq = s3.host.irqs_per_cpu
    assert irq[0] > irq[60] == 250 * 100


def test_hopper_gives_per_instance_gpm_samples() -> None:
    host = loads(H100_MIG, seconds=20).build_host()
    host.observe(10.0)
    snap = host.observe(20.0)
    assert snap.gpu(0).sm_util is None  # type: ignore[union-attr]
    inst = {i.gi_id: i for i in snap.instances}
    assert len(inst) == 3
    llm = snap.tenants["llm"].placement
    train = snap.tenants["train"].placement
    assert llm is not None and train is not None and llm.gi_id is not None
    assert train.gi_id is not None
    idle = next(i for i in inst.values() if i.gi_id not in (llm.gi_id, train.gi_id))
    assert inst[train.gi_id].sm_activity > 0.9  # type: ignore[operator]
    assert inst[llm.gi_id].sm_activity > 0.5  # type: ignore[operator]
    assert idle.sm_activity < 0.05 and idle.dram_activity < 0.05  # type: ignore[operator]
    # only the training job moves data to its instance (the server has no KV offload)
    assert inst[train.gi_id].pcie_rx_bps > 1e8  # type: ignore[operator]
    assert inst[llm.gi_id].pcie_rx_bps == 0 == idle.pcie_rx_bps


# -- levers: io.max ------------------------------------------------------------------------------


def test_io_limit_roundtrip_and_errors() -> None:
    host = nn(10)
    assert host.get_io_limit("t2", "259:0") == IoLimit()
    host.set_io_limit("t2", "259:0", IoLimit(rbps=100_000_000))
    assert host.get_io_limit("t2", "259:0") == IoLimit(rbps=100_000_000)
    host.set_io_limit("t2", "259:0", IoLimit())
    assert host.get_io_limit("t2", "259:0").unlimited
    with pytest.raises(LeverError) as e:
        host.set_io_limit("nobody", "259:0", IoLimit(rbps=1))
    assert e.value.permanent
    with pytest.raises(LeverError, match="no block device"):
        host.get_io_limit("t2", "8:0")
    with pytest.raises(LeverError, match="positive"):
        host.set_io_limit("t2", "259:0", IoLimit(rbps=0))


def test_io_throttle_caps_the_etl_disk_and_pcie_rates() -> None:
    host = nn(140)
    host.observe(80.0)
    host.set_io_limit("t2", "259:0", IoLimit(riops=200))  # 200 x 1 MiB
    a = host.observe(100.0)
    b = host.observe(140.0)
    rate = (b.tenants["t2"].io[0].rbytes - a.tenants["t2"].io[0].rbytes) / 40
    assert rate == pytest.approx(200 * 2**20, rel=0.02)
    rx = (b.gpu(0).pcie_rx_bytes - a.gpu(0).pcie_rx_bytes) / 40  # type: ignore[union-attr,operator]
    assert 0.6e9 < rx < 0.85e9  # T1's ~0.56 GB/s of KV loads plus the throttled ETL


def test_latency_is_monotone_in_the_etl_rate() -> None:
    tails = []
    for read_bps in (0.25e9, 1.0e9, 2.5e9):
        sc = load_scenario("noisy-neighbor", seconds=180)
        t2 = next(t for t in sc.tenants if t.name == "t2")
        sc = dataclasses.replace(sc, tenants=tuple(
            dataclasses.replace(t, read_bps=read_bps) if t is t2 else t for t in sc.tenants))
        host = sc.build_host()
        host.run(180, 5.0)
        t, v = host.ttft_samples("t1")
        tails.append(float(np.quantile(v[t >= 60], 0.99)))
    assert tails == sorted(tails)
    assert tails[-1] > 1.3 * tails[0]


# -- levers: restart, MPS, placement --------------------------------------------------------------


def test_restart_costs_downtime_and_requests_queue_meanwhile() -> None:
    sc = load_scenario("noisy-neighbor", seconds=60)
    sc = dataclasses.replace(sc, tenants=tuple(
        dataclasses.replace(t, restartable=True) if t.name == "t1" else t for t in sc.tenants))
    host = sc.build_host()
    host.observe(10.0)
    host.restart_tenant("t1", None, {})
    with pytest.raises(LeverError, match="already in progress") as e:
        host.restart_tenant("t1", None, {})
    assert not e.value.permanent and e.value.retry_after_s == pytest.approx(20.0)
    down = host.observe(20.0)
    assert not down.tenants["t1"].running and down.tenants["t1"].latency.ttft.count == 0
    back = host.observe(31.0)
    assert back.tenants["t1"].running
    host.observe(40.0)
    r = host.results()["tenants"]["t1"]
    assert r["downtime_s"] == pytest.approx(20.0)
    t, v = host.ttft_samples("t1")
    # the ~600 requests of the downtime waited it out, then drain (KV memory bounds the batch)
    queued = v[(t >= 30) & (t < 40)]
    assert queued.size > 600 + 150 and queued.max() > 19_000
    assert v[(t >= 38) & (t < 40)].max() < 1_000  # drained
    assert r["requests"] == pytest.approx(40 * 30, rel=0.1)


def test_restart_validates_placement_and_env() -> None:
    host = nn(10)
    for place, match in ((Placement(0), "MIG mode: a GPU instance is needed"),
                         (Placement(2, 1), "not in MIG mode"), (Placement(0, 9), "no GPU instance"),
                         (Placement(99), "no GPU 99")):
        with pytest.raises(LeverError, match=match) as e:
            host.restart_tenant("t3", place, {})
        assert e.value.permanent
    with pytest.raises(LeverError, match=r"1\.\.100"):
        host.restart_tenant("t3", None, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "150"})


def test_mps_limit_applies_through_restart_and_helps_a_co_runner() -> None:
    sc = loads(SHARED_GPU, seconds=70)
    tails = {}
    for pct in (None, 50, 20):
        host = sc.build_host()
        host.observe(1.0)
        env = {} if pct is None else {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)}
        host.restart_tenant("train", None, env)
        assert host.observe(10.0).tenants["train"].mps_pct is None  # not before the restart
        snap = host.observe(30.0)
        assert snap.tenants["train"].mps_pct == pct
        host.run(70, 2.0)
        t, v = host.ttft_samples("llm")
        tails[pct] = float(np.quantile(v[t > 25], 0.99))
    assert tails[None] > tails[50] > tails[20]


def test_vgpu_share_applies_at_restart() -> None:
    sc = loads(SHARED_GPU, seconds=60)
    host = sc.build_host()
    host.observe(1.0)
    host.set_vgpu("train", 30, 20 * 2**30)  # restarts it: the share applies when it is up
    down = host.observe(2.0).tenants["train"]
    assert down.share_pct is None and not down.running
    assert host.observe(30.0).tenants["train"].share_pct == 30
    with pytest.raises(LeverError, match=r"1\.\.100"):
        host.set_vgpu("train", 0, 2**30)
    with pytest.raises(LeverError, match="needs"):
        host.set_vgpu("llm", 50, 2**20)
    with pytest.raises(LeverError, match="HAMi shares whole GPUs"):
        nn(5).set_vgpu("t1", 50, 2**32)


# -- levers: MIG ---------------------------------------------------------------------------------


def test_mig_destroy_in_use_create_rules_and_reconfiguration_time() -> None:
    host = nn(120)
    host.observe(1.0)
    with pytest.raises(LeverError, match="in use by t1") as e:
        host.mig_destroy(0, 1)
    assert not e.value.permanent
    with pytest.raises(LeverError, match="occupied") as e:
        host.mig_create(0, "2g.10gb", 0)
    assert not e.value.permanent
    with pytest.raises(LeverError, match="cannot start") as e:
        host.mig_create(0, "2g.10gb", 1)
    assert e.value.permanent
    with pytest.raises(LeverError, match="MIG mode is disabled"):
        host.mig_create(1, "1g.5gb", 0)
    host.stop_tenant("t1")
    host.mig_destroy(0, 1)
    inst = host.mig_create(0, "2g.10gb", 0)
    assert (inst.profile, inst.start, inst.size) == ("2g.10gb", 0, 2)
    host.restart_tenant("t1", Placement(0, inst.gi_id), {})
    with pytest.raises(LeverError, match="in use by t1"):
        host.mig_destroy(0, inst.gi_id)  # the restart holds it
    snap = host.observe(10.0)
    assert snap.busy_gpus == frozenset({0})
    assert [i.profile for i in snap.topology.gpu(0).instances] == ["2g.10gb", "3g.20gb"]
    assert snap.tenants["t1"].placement == Placement(0, inst.gi_id)
    assert not snap.tenants["t1"].running
    assert host.observe(20.0).busy_gpus == frozenset()
    assert host.observe(22.0).tenants["t1"].running  # restart: 20 s after 1 s
    host.run(120, 2.0)
    res = host.results()
    assert res["mig_reconfigs"] == 1  # destroy + create in one reconfiguration
    assert res["tenants"]["t1"]["downtime_s"] == pytest.approx(20.0)


def test_mig_resize_gives_t1_more_sms() -> None:
    tails = {}
    for grow in (False, True):
        host = nn(60)
        host.observe(1.0)
        if grow:
            host.stop_tenant("t1")
            host.mig_destroy(0, 1)
            inst = host.mig_create(0, "2g.10gb", 0)
            host.restart_tenant("t1", Placement(0, inst.gi_id), {})
        host.run(60, 2.0)
        t, v = host.ttft_samples("t1")
        tails[grow] = float(np.quantile(v[t > 25], 0.99))
    assert tails[True] < 0.75 * tails[False]


def test_throughputs_in_natural_units() -> None:
    host = nn(300)
    host.run(300, 5.0)
    r = host.results()
    t1, t2, t3 = (r["tenants"][n] for n in ("t1", "t2", "t3"))
    assert t1["throughput_rps"] == pytest.approx(30, rel=0.05) and t1["completed"] > 8000
    assert t1["requests"] >= t1["completed"]
    assert t2["throughput_bytes_per_s"] == pytest.approx(2.5e9 * 120 / 300, rel=0.05)
    assert t3["throughput"] == pytest.approx(60 / 0.4 / 300, rel=0.1)  # steps/s
    assert 0 < t1["slo_violation_rate"] < 1
    tl = host.timeline()
    assert tl["seconds"][-1] == 299 and len(tl["ttft_p99_ms"]["t1"]) == 300


def test_closed_host_refuses_to_observe() -> None:
    host = nn(5)
    host.close()
    with pytest.raises(RuntimeError, match="closed"):
        host.observe(1.0)


def test_vectorised_window_sketch_equals_the_model_sketch() -> None:
    from gpuguardd.sim.host import _sketch

    rng = np.random.default_rng(5)
    for xs in (rng.lognormal(-4.5, 0.6, 5000).tolist(), [0.0, 1e-9, *[0.01] * 40, 2.5]):
        fast, ref = _sketch(xs), FrozenSketch.of(xs)
        assert fast.items == ref.items and fast.count == ref.count
        assert fast.total == pytest.approx(ref.total)


def test_violation_rate_counts_windows_against_each_slo() -> None:
    base = SHARED_GPU.replace("ttft_p99_ms = 50.0", "@SLO@")
    rates = {}
    for slo in ("ttft_p99_ms = 1000.0", "ttft_p99_ms = 0.001", "tpot_p99_ms = 0.001",
                "ttft_p99_ms = 1000.0, tpot_p99_ms = 1000.0"):
        host = loads(base.replace("@SLO@", slo), seconds=30).build_host()
        host.run(30, 2.0)
        rates[slo] = host.results()["tenants"]["llm"]["slo_violation_rate"]
    assert list(rates.values()) == [0.0, 1.0, 1.0, 0.0]
