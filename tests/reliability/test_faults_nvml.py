"""NVML failing under the real pynvml module (fake C library): NOT_SUPPORTED, UNKNOWN,
TIMEOUT, GPU_IS_LOST, a GPU vanishing mid-tick, and MIG creation failing half way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from structlog.testing import capture_logs

from gpuguardd.host.nvml import NOT_SUPPORTED, Nvml
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.real import RealHost
from tests.host.fake_nvml import FakeGpu, FakeNvmlLib, _CFunc, a100
from tests.host.test_real import _bus, config
from tests.reliability.helpers import events

UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
LOST = pynvml.NVML_ERROR_GPU_IS_LOST
NOT_SUP = pynvml.NVML_ERROR_NOT_SUPPORTED
INSUFFICIENT = pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES


class FaultyLib(FakeNvmlLib):
    """``fail[name] = [codes...]`` makes the next calls of C function ``name`` return those
    codes (one each; ``None`` lets that call through); ``lose[name] = gpu`` marks ``gpu`` lost
    when ``name`` is first called."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        super().__init__(gpus)
        self.fail: dict[str, list[int | None]] = {}
        self.lose: dict[str, int] = {}

    def __getattr__(self, name: str) -> _CFunc:
        real = FakeNvmlLib.__getattr__(self, name)

        def call(*args: Any) -> Any:
            if name in self.lose:
                self.gpus[self.lose.pop(name)].lost = True
            codes = self.fail.get(name)
            code = codes.pop(0) if codes else None
            return real(*args) if code is None else code

        return _CFunc(call)


@pytest.fixture
def gpus() -> list[FakeGpu]:
    gs = [a100(0), a100(1), a100(2)]
    for i, g in enumerate(gs):
        g.bus_id = _bus(i)
        g.mig = i == 0
    gs[0].add_gi("3g.40gb", 0)
    return gs


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> FaultyLib:
    fake = FaultyLib(gpus)
    monkeypatch.setattr(pynvml, "nvmlLib", fake)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    return fake


@pytest.fixture
def nv(lib: FaultyLib) -> Iterator[Nvml]:
    n = Nvml()
    assert n.available()
    yield n
    n.close()


@pytest.fixture
def host(tmp_path: Path, tree: Path, lib: FaultyLib) -> Iterator[RealHost]:
    h = RealHost(config(tmp_path), HostPaths(tree, tree / "cgroup"), monitor=False)
    yield h
    h.close()


@pytest.mark.parametrize("code", [UNKNOWN, TIMEOUT])
def test_transient_nvml_error_blanks_one_reading_for_one_tick(
    nv: Nvml, lib: FaultyLib, code: int
) -> None:
    lib.fail["nvmlDeviceGetUtilizationRates"] = [None, code]  # GPU 0 passes, GPU 1 fails
    t1 = nv.sample(1.0)
    assert t1.gpus[1].sm_util is None and t1.gpus[1].healthy  # gpu 0 is MIG: never has it
    assert t1.gpus[2].sm_util == 0.37, "one failure blanks one reading only"
    assert nv.errors_total == 1
    t2 = nv.sample(3.0)
    assert t2.gpus[1].sm_util == 0.37, "a transient error is not cached as unsupported"


def test_not_supported_is_asked_once_and_typed(nv: Nvml, lib: FaultyLib) -> None:
    lib.fail["nvmlDeviceGetPowerUsage"] = [NOT_SUP]
    nv.sample(1.0)
    before = lib.calls.get("nvmlDeviceGetPowerUsage", 0)
    for t in range(2, 6):
        assert nv.sample(float(t)).gpus[0].power_w is None
    assert lib.calls.get("nvmlDeviceGetPowerUsage", 0) == before + 2 * 4  # gpus 1, 2 only
    assert not nv.supports(0, "power")
    assert nv.static(1).pcie_gen == 4 and nv.static(1).pcie_gen is not NOT_SUPPORTED


def test_gpu_lost_mid_tick_is_reported_unhealthy_and_no_longer_queried(
    host: RealHost, lib: FaultyLib
) -> None:
    # GPU 1 answers its utilisation, then falls off the bus before its process list
    lib.lose["nvmlDeviceGetComputeRunningProcesses_v3"] = 0
    lib.gpus[0].lost = False
    with capture_logs() as logs:
        snap = host.observe(1.0)
    lost = [g.gpu for g in snap.gpus if not g.healthy]
    assert lost == [0] and snap.busy_gpus == frozenset({0})
    [health] = events(logs, "gpu_health")
    assert health["gpu"] == 0 and health["kind"] == "gpu_lost"
    calls = dict(lib.calls)
    snap2 = host.observe(3.0)
    assert [g.gpu for g in snap2.gpus if not g.healthy] == [0]
    assert snap2.gpus[1].healthy and snap2.gpus[2].healthy
    # the lost GPU is not asked again (a lost GPU can take seconds per call)
    assert lib.calls["nvmlDeviceGetUtilizationRates"] - calls["nvmlDeviceGetUtilizationRates"] == 2
    assert host.lever_health()["gpu_gpu_lost"] == 1


def test_lost_gpu_refuses_mig_levers_without_raising_anything_else(
    host: RealHost, lib: FaultyLib
) -> None:
    lib.gpus[0].lost = True
    host.observe(1.0)
    with pytest.raises(LeverError):
        host.mig_create(0, "1g.10gb", 4)


@pytest.mark.parametrize("code,permanent", [(INSUFFICIENT, False), (UNKNOWN, False),
                                            (NOT_SUP, True)])
def test_mig_create_half_way_rolls_the_gpu_instance_back(
    nv: Nvml, lib: FaultyLib, gpus: list[FakeGpu], code: int, permanent: bool
) -> None:
    before = {gi.id: (gi.profile.name, gi.start) for gi in gpus[0].gis.values()}
    lib.fail["nvmlGpuInstanceCreateComputeInstance"] = [code]
    with pytest.raises(LeverError) as e:
        nv.mig_create(0, "2g.20gb", 4)
    assert e.value.permanent is permanent
    after = {gi.id: (gi.profile.name, gi.start) for gi in gpus[0].gis.values()}
    assert after == before, "the GPU instance created before the failure was not destroyed"
    assert [m.gi_id for m in nv.mig_instances(0)] == list(before)
    inst = nv.mig_create(0, "2g.20gb", 4)  # the placement is free again
    assert inst.start == 4 and inst.uuid.startswith("MIG-")
