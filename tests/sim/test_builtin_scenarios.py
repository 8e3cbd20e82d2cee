"""The built-in scenarios: interference is real (not painted on) and the levers act on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpuguardd.host.protocol import Host
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import Placement
from gpuguardd.sim import SimHost, load_scenario

SLO_MS = 15.0


def p99(host: SimHost, tenant: str, lo: float, hi: float) -> float:
    t, v = host.ttft_samples(tenant)
    m = (t >= lo) & (t < hi)
    assert m.sum() > 500, "too few samples for a p99"
    return float(np.quantile(v[m], 0.99))


@pytest.fixture(scope="module")
def static_run() -> SimHost:
    host = load_scenario("noisy-neighbor", seconds=240).build_host()
    host.run(240, 2.0)
    return host


def test_simhost_is_a_host() -> None:
    host: Host = load_scenario("noisy-neighbor", seconds=10).build_host()
    snap = host.observe(2.0)
    assert set(snap.tenants) == {"t1", "t2", "t3"}


def test_t1_alone_meets_slo_and_t2_breaks_it(static_run: SimHost) -> None:
    alone = p99(static_run, "t1", 0, 60)  # T2 and T3 off
    with_etl = p99(static_run, "t1", 60, 180)  # T2 on
    after = p99(static_run, "t1", 180, 240)  # off again
    assert alone < 0.85 * SLO_MS
    assert after < 0.85 * SLO_MS
    assert with_etl > 1.2 * SLO_MS


def _t2_on(seconds: float = 150) -> SimHost:
    host = load_scenario("noisy-neighbor", seconds=seconds).build_host()
    host.observe(60.0)  # T2 starts at 60 s
    return host


def test_io_throttle_on_etl_lowers_t1_tail() -> None:
    tails = []
    for cap in (None, 1_000_000_000, 100_000_000):
        host = _t2_on()
        if cap is not None:
            host.set_io_limit("t2", "259:0", IoLimit(rbps=cap))
        host.run(150, 2.0)
        tails.append(p99(host, "t1", 62, 150))
    assert tails[0] > tails[1] > tails[2]
    assert tails[2] < SLO_MS


def test_moving_etl_behind_another_switch_helps() -> None:
    tails = {}
    for gpu in (1, 4):  # GPU 1 shares T1's switch uplink; GPU 4 sits behind switch 2
        host = _t2_on(200)
        host.restart_tenant("t2", Placement(gpu), {})
        host.run(200, 2.0)
        assert host.results()["tenants"]["t2"]["downtime_s"] == pytest.approx(20.0)
        tails[gpu] = p99(host, "t1", 85, 200)
    assert tails[1] > SLO_MS  # same switch: the uplink is still shared
    assert tails[4] < 0.85 * SLO_MS


def test_pcie_hotspot_is_a_switch_uplink_problem() -> None:
    sc = load_scenario("pcie-hotspot", seconds=300)
    slo = sc.tenants[0].ttft_p99_ms
    assert slo is not None
    static = sc.build_host()
    static.run(300, 2.0)
    assert p99(static, "llm", 0, 120) < 0.85 * slo  # the ETL starts at 120 s
    assert p99(static, "llm", 120, 300) > 1.3 * slo
    moved = sc.build_host()
    moved.observe(120.0)
    moved.restart_tenant("etl", Placement(5), {})  # behind switch 2
    moved.run(300, 2.0)
    assert p99(moved, "llm", 142, 300) < 0.85 * slo


SHARED_AZURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "azure-llm-2023"


@pytest.mark.skipif(not SHARED_AZURE.is_dir(), reason=f"shared data absent: {SHARED_AZURE}")
def test_azure_conv_etl_phase_raises_the_tail() -> None:
    host = load_scenario("azure-conv").build_host()
    host.run(3600, 10.0)
    r = host.results()["tenants"]
    assert r["chat"]["requests"] == 19366
    assert r["chat"]["completed"] == 19366  # the server keeps up with the trace
    calm = max(p99(host, "chat", 0, 1200), p99(host, "chat", 2400, 3600))
    assert p99(host, "chat", 1200, 2400) > 1.5 * calm


def test_shared_gpu_mps_limit_on_the_co_runner_restores_the_tail() -> None:
    sc = load_scenario("shared-gpu", seconds=300)
    slo = sc.tenants[0].ttft_p99_ms
    assert slo is not None
    static = sc.build_host()
    static.run(300, 2.0)
    assert p99(static, "llm", 0, 120) < 0.5 * slo  # training starts at 120 s
    assert p99(static, "llm", 120, 300) > 1.5 * slo
    limited = sc.build_host()
    limited.observe(120.0)
    limited.restart_tenant("train", None, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"})
    limited.run(300, 2.0)
    assert p99(limited, "llm", 145, 300) < 0.85 * slo
