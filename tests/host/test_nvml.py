"""The NVML adapter over the real pynvml module, with a fake C library underneath."""

from __future__ import annotations

from collections.abc import Iterator

import pynvml
import pytest

from gpuguardd.host.nvml import NOT_SUPPORTED, Nvml, sysfs_bus_id
from gpuguardd.host.protocol import LeverError
from tests.host.fake_nvml import FakeGpu, FakeNvmlLib, Proc, a100, h100


def use(monkeypatch: pytest.MonkeyPatch, lib: FakeNvmlLib | None) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})


@pytest.fixture
def gpus() -> list[FakeGpu]:
    return [a100(0), h100(1)]


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> FakeNvmlLib:
    fake = FakeNvmlLib(gpus)
    use(monkeypatch, fake)
    return fake


@pytest.fixture
def nv(lib: FakeNvmlLib) -> Iterator[Nvml]:
    n = Nvml()
    yield n
    n.close()


def test_without_driver_nvml_is_unavailable_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(monkeypatch, None)
    monkeypatch.setattr(pynvml, "CDLL", _no_library)
    n = Nvml()
    assert n.available() is False
    assert n.count() == 0
    assert "NVML" in (n.init_error or "")


def _no_library(name: str) -> object:
    raise OSError(f"{name}: cannot open shared object file")


def test_static_facts_and_profiles(nv: Nvml) -> None:
    s = nv.static(0)
    assert s.uuid.startswith("GPU-a100") and s.name == "NVIDIA A100-SXM4-80GB"
    assert s.pci_bus_id == "0000:07:00.0"
    assert s.sm_count == 108 and s.memory_bytes == 81920 * 2**20
    assert (s.pcie_gen, s.pcie_width) == (4, 16)
    assert s.mig_enabled and not s.gpm
    profiles = {p.name: p for p in nv.mig_profiles(0)}
    assert profiles["1g.10gb"].create_id == 19  # not the query enum 0
    assert profiles["1g.10gb"].placements == (0, 1, 2, 3, 4, 5, 6)
    assert profiles["2g.20gb"].create_id == 14 and profiles["2g.20gb"].placements == (0, 2, 4)
    assert profiles["3g.40gb"].size == 4 and profiles["3g.40gb"].sm_count == 42
    assert profiles["7g.80gb"].create_id == 0
    assert nv.static(1).gpm


def test_sample_counters_and_not_supported_is_cached(nv: Nvml, lib: FakeNvmlLib) -> None:
    t1 = nv.sample(now=100.0)
    g0 = t1.gpus[0]
    assert g0.healthy
    assert g0.sm_util is None and g0.mem_util is None  # MIG mode: no whole-GPU utilisation
    assert (g0.pcie_tx_bytes, g0.pcie_rx_bytes) == (1_000_000, 5_000_000)
    assert g0.pcie_replays == 3 and g0.power_w == 250.0
    assert not nv.supports(0, "utilization")
    nv.sample(now=102.0)
    nv.sample(now=104.0)
    # asked once per GPU, then remembered as NOT_SUPPORTED
    assert lib.calls["nvmlDeviceGetUtilizationRates"] == 2


def test_utilisation_without_mig(monkeypatch: pytest.MonkeyPatch) -> None:
    g = a100()
    g.mig = False
    use(monkeypatch, FakeNvmlLib([g]))
    s = Nvml().sample(0.0).gpus[0]
    assert s.sm_util == pytest.approx(0.37) and s.mem_util == pytest.approx(0.12)


def test_pcie_fallback_integrates_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    g = a100()
    g.pcie_fields = False
    lib = FakeNvmlLib([g])
    use(monkeypatch, lib)
    nv = Nvml()
    first = nv.sample(10.0).gpus[0]
    second = nv.sample(12.0).gpus[0]
    assert first.pcie_tx_bytes == 0
    assert second.pcie_tx_bytes == 1000 * 1024 * 2 and second.pcie_rx_bytes == 2000 * 1024 * 2
    nv.sample(14.0)
    assert lib.calls["nvmlDeviceGetFieldValues"] == 1


def test_pcie_fallback_on_old_driver_without_field_values(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, FakeNvmlLib([a100()], missing=frozenset({"nvmlDeviceGetFieldValues"})))
    nv = Nvml()
    nv.sample(0.0)
    assert nv.sample(1.0).gpus[0].pcie_rx_bytes == 2000 * 1024


def test_static_reports_not_supported_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, FakeNvmlLib([a100()], missing=frozenset({"nvmlDeviceGetMaxPcieLinkWidth"})))
    assert Nvml().static(0).pcie_max_width is NOT_SUPPORTED


def test_mig_create_destroy_with_sparse_indices(nv: Nvml, gpus: list[FakeGpu]) -> None:
    a = gpus[0]
    for start in (0, 1, 2):
        a.add_gi("1g.10gb", start)
    middle = next(g for g in a.gis.values() if g.start == 1)
    nv.mig_destroy(0, middle.id)  # frees MIG device index 1: indices are now sparse
    inst = nv.mig_instances(0)
    assert [(m.profile, m.start) for m in inst] == [("1g.10gb", 0), ("1g.10gb", 2)]
    assert all(m.uuid.startswith("MIG-") for m in inst)

    new = nv.mig_create(0, "2g.20gb", 4)
    assert (new.profile, new.start, new.size) == ("2g.20gb", 4, 2)
    assert new.uuid.startswith("MIG-") and new.uuid == a.gis[new.gi_id].uuid
    assert nv.mig_uuid(0, new.gi_id) == new.uuid
    assert [(m.profile, m.start) for m in nv.mig_instances(0)] == [
        ("1g.10gb", 0), ("1g.10gb", 2), ("2g.20gb", 4)]


def test_mig_create_errors(nv: Nvml, gpus: list[FakeGpu]) -> None:
    gpus[0].add_gi("3g.40gb", 4)
    with pytest.raises(LeverError) as bad_start:
        nv.mig_create(0, "2g.20gb", 3)
    assert bad_start.value.permanent
    with pytest.raises(LeverError) as occupied:
        nv.mig_create(0, "1g.10gb", 5)
    assert not occupied.value.permanent  # placement taken: may free up later
    with pytest.raises(LeverError, match="no MIG profile") as unknown:
        nv.mig_create(0, "5g.50gb", 0)
    assert unknown.value.permanent
    assert len(gpus[0].gis) == 1


def test_mig_destroy_refuses_while_in_use(nv: Nvml, gpus: list[FakeGpu]) -> None:
    a = gpus[0]
    gi = a.add_gi("2g.20gb", 0)
    a.procs.append(Proc(4242, gi.id, 0))
    with pytest.raises(LeverError, match="4242") as e:
        nv.mig_destroy(0, gi.id)
    assert not e.value.permanent
    assert gi.id in a.gis and gi.cis  # nothing was torn down
    assert nv.processes(0) == {gi.id: (4242,)}
    a.procs.clear()
    nv.mig_destroy(0, gi.id)
    assert gi.id not in a.gis and nv.mig_uuid(0, gi.id) is None
    nv.mig_destroy(0, gi.id)  # already gone: done, not an error


def test_nvml_in_use_on_destroy_is_temporary(nv: Nvml, gpus: list[FakeGpu]) -> None:
    a = gpus[0]
    gi = a.add_gi("1g.10gb", 0)
    # a process NVML does not list for us (another PID namespace) still holds the instance
    a.procs.append(Proc(1, gi.id, 0))
    nv_processes = nv.processes
    nv.processes = lambda gpu: {}  # type: ignore[method-assign]
    try:
        with pytest.raises(LeverError, match="destroy") as e:
            nv.mig_destroy(0, gi.id)
    finally:
        nv.processes = nv_processes  # type: ignore[method-assign]
    assert not e.value.permanent and gi.id in a.gis


def test_gpm_per_mig_instance_on_hopper(nv: Nvml, lib: FakeNvmlLib, gpus: list[FakeGpu]) -> None:
    h = gpus[1]
    gi = h.add_gi("3g.40gb", 0)
    first = [i for i in nv.sample(0.0).instances if i.gpu == 1]
    assert [(i.gi_id, i.sm_activity) for i in first] == [(gi.id, None)]
    lib.clock, gi.gpm_counter = 2.0, 1.5  # busy 75 % of the last two seconds
    second = next(i for i in nv.sample(2.0).instances if i.gpu == 1)
    assert second.sm_activity == pytest.approx(0.75)
    assert second.dram_activity == pytest.approx(0.375)
    assert second.pcie_rx_bps == pytest.approx(750.0 * 2**20)
    assert not [i for i in nv.sample(4.0).instances if i.gpu == 0]  # A100: no GPM
    assert len(lib.gpm_samples) == 1  # old samples are freed


def test_lost_gpu_is_a_health_event_not_a_crash(nv: Nvml, lib: FakeNvmlLib,
                                                gpus: list[FakeGpu]) -> None:
    nv.sample(0.0)
    gpus[0].lost = True
    t = nv.sample(1.0)
    assert t.gpus[0].healthy is False and t.gpus[1].healthy
    assert [(e.gpu, e.kind) for e in t.events] == [(0, "gpu_lost")]
    before = dict(lib.calls)
    t2 = nv.sample(2.0)
    assert t2.gpus[0].healthy is False and t2.events == ()
    assert lib.calls["nvmlDeviceGetFieldValues"] == before["nvmlDeviceGetFieldValues"] + 1


def test_bus_id_spelling() -> None:
    assert sysfs_bus_id("00000000:17:00.0") == "0000:17:00.0"
    assert sysfs_bus_id("00000001:A0:00.0") == "0001:a0:00.0"


def test_static_sees_mig_changes_made_by_someone_else(nv: Nvml, gpus: list[FakeGpu]) -> None:
    assert nv.static(0).instances == ()
    gi = gpus[0].add_gi("7g.80gb", 0)  # e.g. nvidia-smi mig -cgi behind our back
    inst = nv.static(0).instances
    assert [(i.gi_id, i.uuid) for i in inst] == [(gi.id, gi.uuid)]
