"""RealHost on fake sysfs/procfs/cgroupfs trees and a fake NVML C library."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from gpuguardd.config import (
    Config,
    DaemonConfig,
    HooksConfig,
    LatencySourceConfig,
    PushConfig,
    SloConfig,
    TenantConfig,
)
from gpuguardd.host.nvml import Nvml
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.real import HostStartupError, NoGpuError, RealHost
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import Placement
from tests.host.fake_nvml import FakeGpu, FakeNvmlLib, a100
from tests.host.fake_sysfs import p4d_like
from tests.host.test_cgroup_io import make_v2

RECORD = r"""
import json, os, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"action": os.environ["GPUGUARD_ACTION"], "env": dict(os.environ)}) + "\n")
"""


def _bus(i: int) -> str:
    # the GPUs of the p4d-like fake tree, in NVML order
    return ["00000000:13:00.0", "00000000:14:00.0", "00000000:33:00.0"][i]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    p4d_like(root)
    (root / "proc" / "interrupts").write_text(
        "           CPU0       CPU1\n 40:         10         20   PCI-MSI  nvme0q1\n")
    (root / "proc" / "diskstats").write_text(
        " 259       0 nvme0n1 10 0 100 0 20 0 300 0 0 0 0 0 0 0 0 0 0\n"
        " 259       1 nvme0n1p1 1 0 1 0 1 0 1 0 0 0 0 0 0 0 0 0 0\n")
    cg = root / "cgroup"
    etl = make_v2(cg, "system.slice/etl.service")
    (etl / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    llm = cg / "system.slice" / "llm.service"
    llm.mkdir()
    (llm / "io.max").write_text("")
    (llm / "io.stat").write_text("")
    (llm / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    return root


def config(tmp_path: Path, *, require_gpu: bool = True) -> Config:
    hook = [sys.executable, "-c", RECORD, str(tmp_path / "hooks.log")]
    return Config(
        daemon=DaemonConfig(require_gpu=require_gpu, state_dir=str(tmp_path / "state")),
        push=PushConfig(socket=str(tmp_path / "run" / "latency.sock")),
        tenants=(
            TenantConfig(name="t1", tenant_class="latency", cgroup="system.slice/llm.service",
                         slo=SloConfig(ttft_p99_ms=15.0), gpu="0"),
            TenantConfig(name="t2", tenant_class="batch", cgroup="system.slice/etl.service",
                         hooks=HooksConfig(restart=hook, stop=hook)),
            TenantConfig(name="t3", tenant_class="latency", slo=SloConfig(ttft_p99_ms=50.0),
                         latency=LatencySourceConfig(source="prometheus",
                                                     url="http://127.0.0.1:1/metrics",
                                                     timeout_s=0.2)),
        ),
    )


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> list[FakeGpu]:
    gs = [a100(0), a100(1), a100(2)]
    for i, g in enumerate(gs):
        g.bus_id = _bus(i)
    gs[0].add_gi("3g.40gb", 0)
    gs[0].add_gi("3g.40gb", 4)
    monkeypatch.setattr(pynvml, "nvmlLib", FakeNvmlLib(gs))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    return gs


@pytest.fixture
def host(tmp_path: Path, tree: Path, gpus: list[FakeGpu]) -> Iterator[RealHost]:
    h = RealHost(config(tmp_path), HostPaths(tree, tree / "cgroup"), monitor=False)
    yield h
    h.close()


def test_require_gpu_without_nvml_fails_with_one_clear_error(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", _no_lib)
    with pytest.raises(NoGpuError) as e:
        RealHost(config(tmp_path), HostPaths(tree, tree / "cgroup"), monitor=False)
    msg = str(e.value)
    assert "require_gpu" in msg and "gpuguardd run --sim" in msg
    assert "driver loaded" in msg  # the fake tree has NVIDIA PCI devices


def _no_lib(name: str) -> object:
    raise OSError(name)


def test_without_gpu_runs_host_levers_only(tmp_path: Path, tree: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", _no_lib)
    h = RealHost(config(tmp_path, require_gpu=False), HostPaths(tree, tree / "cgroup"),
                 monitor=False)
    try:
        snap = h.observe(1.0)
        assert snap.gpus == () and snap.topology.gpus == ()
        assert len(snap.topology.block_devices) == 5
        h.set_io_limit("t2", "8:16", IoLimit(wbps=10_000_000))
        assert h.get_io_limit("t2", "8:16") == IoLimit(wbps=10_000_000)
        with pytest.raises(LeverError) as e:
            h.mig_create(0, "1g.10gb", 0)
        assert e.value.permanent
    finally:
        h.close()
    assert h.cgroups is not None and h.cgroups.get_limit(
        "system.slice/etl.service", "8:16") == IoLimit(wbps=1048576)  # restored on close


def test_topology_joins_nvml_and_sysfs(host: RealHost) -> None:
    topo = host.topology()
    assert [g.pci_bus_id for g in topo.gpus] == ["0000:13:00.0", "0000:14:00.0", "0000:33:00.0"]
    assert topo.share_switch(0, 1) and not topo.share_switch(0, 2)
    assert topo.gpus[0].numa_node == 0 and topo.gpus[0].root == "0000:10:01.0"
    assert topo.gpus[0].mig_enabled
    assert [(i.profile, i.start) for i in topo.gpus[0].instances] == [
        ("3g.40gb", 0), ("3g.40gb", 4)]
    sw = topo.switch(topo.gpus[0].switch or "")
    assert sw is not None and sw.gen == 3 and sw.parent == "0000:10:01.0"


def test_observe_collects_everything(host: RealHost, gpus: list[FakeGpu]) -> None:
    assert host.push is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(json.dumps({"tenant": "t1", "ttft_s": [0.004, 0.005, 0.020]}).encode(),
                 str(host.push.path))
        s.sendto(b'{"tenant": "nobody", "ttft_s": 1}', str(host.push.path))
    deadline = time.monotonic() + 2
    while host.push.accepted_samples < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = host.observe(10.0)
    t1, t2, t3 = snap.tenants["t1"], snap.tenants["t2"], snap.tenants["t3"]
    assert t1.latency.ok and t1.latency.ttft.count == 3 and t1.work_done == 3
    assert t1.placement == Placement(0) and not t1.running  # cgroup not populated
    assert t2.running and t2.restartable and not t1.restartable
    assert {c.device for c in t2.io} == {"8:16", "259:0"}
    assert not t3.latency.ok  # its /metrics endpoint refuses connections: unknown window
    assert snap.host.irqs_per_cpu == {0: 10, 1: 20}
    assert snap.host.disk_bytes == {"259:0": 400 * 512}  # partitions not double-counted
    assert [g.gpu for g in snap.gpus] == [0, 1, 2] and snap.gpus[0].pcie_rx_bytes == 5_000_000
    assert host.push_rejected_total()["unknown_tenant"] == 1
    gpus[1].lost = True
    snap2 = host.observe(12.0)
    assert snap2.busy_gpus == frozenset({1})
    assert host.lever_health()["gpu_gpu_lost"] == 1


def test_mig_uuid_placement_and_restart_env(host: RealHost, tmp_path: Path,
                                            gpus: list[FakeGpu]) -> None:
    inst = host.topology().gpus[0].instances[1]
    host.config = Config(
        daemon=host.config.daemon, push=host.config.push,
        tenants=(*host.config.tenants[:1],
                 TenantConfig(name="t2", cgroup="system.slice/etl.service", gpu=inst.uuid,
                              hooks=host.config.tenants[1].hooks), host.config.tenants[2]))
    assert host.observe(1.0).tenants["t2"].placement == Placement(0, inst.gi_id)
    host.restart_tenant("t2", Placement(0, instances_gi(host, 0)),
                        {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"})
    rec = json.loads((tmp_path / "hooks.log").read_text().splitlines()[-1])
    assert rec["action"] == "restart"
    assert rec["env"]["CUDA_VISIBLE_DEVICES"] == host.topology().gpus[0].instances[0].uuid
    assert rec["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    s = host.observe(2.0).tenants["t2"]
    assert s.mps_pct == 50 and s.placement == Placement(0, instances_gi(host, 0))
    with pytest.raises(LeverError, match="not restartable") as e:
        host.restart_tenant("t1", None, {})
    assert e.value.permanent


def instances_gi(host: RealHost, k: int) -> int:
    return host.topology().gpus[0].instances[k].gi_id


def test_protected_tenant_is_never_throttled(host: RealHost) -> None:
    with pytest.raises(LeverError, match="protected") as e:
        host.set_io_limit("t1", "8:16", IoLimit(wbps=1_000_000))
    assert e.value.permanent
    host.set_io_limit("t1", "8:16", IoLimit())  # lifting is fine
    assert host.lever_health()["io"] == 1


def test_mig_levers_update_topology(host: RealHost, gpus: list[FakeGpu]) -> None:
    gi = host.topology().gpus[0].instances[1].gi_id
    host.mig_destroy(0, gi)
    assert len(host.topology().gpus[0].instances) == 1
    new = host.mig_create(0, "2g.20gb", 4)
    assert new.uuid.startswith("MIG-")
    assert [(i.profile, i.start) for i in host.topology().gpus[0].instances] == [
        ("3g.40gb", 0), ("2g.20gb", 4)]
    with pytest.raises(LeverError) as e:
        host.set_vgpu("t2", 30, 10**9)
    assert e.value.permanent


def test_real_paths_no_gpu_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On this machine (no NVIDIA driver): require_gpu=false works against the real /sys."""
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    nv = Nvml()
    if nv.available():
        pytest.skip("this machine has NVML")
    cfg = Config(daemon=DaemonConfig(require_gpu=False, state_dir=str(tmp_path)),
                 push=PushConfig(socket=str(tmp_path / "s.sock")))
    h = RealHost(cfg, HostPaths(Path("/"), Path("/sys/fs/cgroup")), nvml=nv, monitor=False)
    try:
        snap = h.observe(0.0)
        assert snap.topology.numa_nodes and snap.host.irqs_per_cpu
        assert all(d in snap.host.disk_bytes for d in
                   (b.devno for b in snap.topology.block_devices))
    finally:
        h.close()
    with pytest.raises(NoGpuError):
        RealHost(Config(daemon=DaemonConfig(state_dir=str(tmp_path))),
                 HostPaths(Path("/")), nvml=Nvml(), monitor=False)


def test_unusable_push_socket_is_a_startup_error(tmp_path: Path, tree: Path,
                                                 gpus: list[FakeGpu]) -> None:
    cfg = config(tmp_path)
    Path(cfg.push.socket).parent.mkdir(parents=True)
    Path(cfg.push.socket).write_text("not a socket")
    with pytest.raises(HostStartupError, match=r"push\.socket"):
        RealHost(cfg, HostPaths(tree, tree / "cgroup"), monitor=False)
