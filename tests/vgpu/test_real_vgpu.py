"""RealHost.set_vgpu on a fake HAMi tree (regions built byte for byte) with a recording hook."""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from structlog.testing import capture_logs

from gpuguardd.config import (
    Config,
    DaemonConfig,
    HooksConfig,
    PushConfig,
    SloConfig,
    TenantConfig,
    TenantVgpuConfig,
    VgpuConfig,
)
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.real import RealHost
from gpuguardd.model.actions import Result, VgpuSet
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from tests.host.test_real import RECORD, _no_lib, tree  # noqa: F401  (tree: a fixture)
from tests.vgpu.test_hami import region_bytes

GIB = 1 << 30


def _config(tmp_path: Path, root: Path) -> Config:
    hook = [sys.executable, "-c", RECORD, str(tmp_path / "hooks.log")]
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    mk = TenantVgpuConfig(model="Qwen3-1.7B", pod_uid="pod-uid-1", container="llm", device=1)
    k8s = dataclasses.replace(mk, k8s_namespace="llm", k8s_owner="Deployment/qwen")
    return Config(
        daemon=DaemonConfig(require_gpu=False, state_dir=str(tmp_path / "state")),
        push=PushConfig(socket=str(tmp_path / "run" / "latency.sock")),
        vgpu=VgpuConfig(enabled=True, hami_root=str(root)),
        tenants=(
            TenantConfig(name="llm", tenant_class="latency", restartable=True,
                         slo=SloConfig(ttft_p99_ms=200.0), hooks=HooksConfig(restart=hook),
                         vgpu=k8s),
            TenantConfig(name="fixed", tenant_class="latency", slo=SloConfig(ttft_p99_ms=200.0),
                         hooks=HooksConfig(restart=hook), vgpu=mk),
            TenantConfig(name="broken", tenant_class="latency", restartable=True,
                         slo=SloConfig(ttft_p99_ms=200.0), hooks=HooksConfig(restart=fail),
                         vgpu=mk),
            TenantConfig(name="escape", tenant_class="latency", restartable=True,
                         slo=SloConfig(ttft_p99_ms=200.0), hooks=HooksConfig(restart=hook),
                         vgpu=TenantVgpuConfig(model="Qwen3-1.7B", region_dir="link")),
        ),
    )


@pytest.fixture
def hami_root(tmp_path: Path) -> Path:
    root = tmp_path / "containers"
    d = root / "pod-uid-1_llm"
    d.mkdir(parents=True)
    (d / "GPU-00000000.cache").write_bytes(region_bytes(limits=(8 * GIB, 4 * GIB), sm=(30, 50)))
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    return root


@pytest.fixture
def host(tmp_path: Path, tree: Path, hami_root: Path,  # noqa: F811
         monkeypatch: pytest.MonkeyPatch) -> Iterator[RealHost]:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", _no_lib)
    h = RealHost(_config(tmp_path, hami_root), HostPaths(tree, tree / "cgroup"), monitor=False)
    yield h
    h.close()


def _limits(path: Path, device: int) -> tuple[int, int]:
    data = path.read_bytes()
    return (struct.unpack_from("<Q", data, 1600 + 8 * device)[0],
            struct.unpack_from("<Q", data, 1728 + 8 * device)[0])


def test_share_written_to_the_region_and_the_tenant_restarted_with_hami_env(
        host: RealHost, hami_root: Path, tmp_path: Path) -> None:
    region = hami_root / "pod-uid-1_llm" / "GPU-00000000.cache"
    before = region.read_bytes()
    ex = Executor(host, Journal(str(tmp_path / "journal"), wall_clock_now=0.0, durable=False))
    with capture_logs() as logs:
        out = ex.apply([VgpuSet("llm", 22, 6 * GIB + 1, reason="test")], 10.0)
    assert [o.result for o in out] == [Result.APPLIED]
    after = region.read_bytes()
    assert _limits(region, 1) == (6 * GIB + 1, 22)
    assert _limits(region, 0) == (8 * GIB, 30)  # the other device is untouched
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed and min(changed) >= 1600 + 8 and max(changed) < 1728 + 16  # only [1] slots
    runs = [json.loads(line) for line in (tmp_path / "hooks.log").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["action"] == "restart"
    env = runs[0]["env"]
    assert env["CUDA_DEVICE_SM_LIMIT"] == "22"
    assert env["CUDA_DEVICE_MEMORY_LIMIT"] == f"{6 * 1024 + 1}m"  # MiB, rounded up
    # the values found before the first write are journalled for the operator
    (entry,) = ex.active()
    assert entry.original == {"share_pct": 50, "memory_bytes": 4 * GIB}
    assert host.get_vgpu("llm") == {"share_pct": 50, "memory_bytes": 4 * GIB}
    # the operator's patch that keeps the share when the pod is re-created
    (event,) = [e for e in logs if e["event"] == "vgpu_set"]
    patch = event["k8s_patch"]
    assert patch["target"] == {"kind": "Deployment", "namespace": "llm", "name": "qwen"}
    assert {"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/"
            "nvidia.com~1gpucores", "value": "22"} in patch["json_patch"]


def test_failed_restart_puts_the_region_back_and_the_lever_backs_off(
        host: RealHost, hami_root: Path) -> None:
    region = hami_root / "pod-uid-1_llm" / "GPU-00000000.cache"
    before = region.read_bytes()
    with pytest.raises(LeverError) as e:
        host.set_vgpu("broken", 22, 6 * GIB)
    assert not e.value.permanent
    assert region.read_bytes() == before


def test_refusals_are_permanent_and_name_why(host: RealHost, hami_root: Path) -> None:
    region = hami_root / "pod-uid-1_llm" / "GPU-00000000.cache"
    before = region.read_bytes()
    with pytest.raises(LeverError, match="not restartable") as e:
        host.set_vgpu("fixed", 22, 6 * GIB)
    assert e.value.permanent
    with pytest.raises(LeverError, match=r"leaves vgpu\.hami_root") as e:
        host.set_vgpu("escape", 22, 6 * GIB)
    assert e.value.permanent
    assert region.read_bytes() == before


def test_missing_region_is_temporary(tmp_path: Path, tree: Path,  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", _no_lib)
    root = tmp_path / "empty"
    root.mkdir()
    h = RealHost(_config(tmp_path, root), HostPaths(tree, tree / "cgroup"), monitor=False)
    try:
        with pytest.raises(LeverError, match="no HAMi region file") as e:
            h.set_vgpu("llm", 22, 6 * GIB)
        assert not e.value.permanent
        assert not (tmp_path / "hooks.log").exists()
    finally:
        h.close()
