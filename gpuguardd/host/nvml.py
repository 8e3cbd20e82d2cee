"""The one NVML adapter (``nvidia-ml-py``, module ``pynvml``). Nothing else imports pynvml.

* Lazy: the library is loaded and initialised on first use; a host without the driver gets
  ``available() == False`` and ``init_error`` explains why - it is not an exception.
* Capabilities are probed once: a query that answers ``NOT_SUPPORTED`` (or whose C function the
  installed driver lacks) is remembered per GPU and never asked again, and the caller sees the
  :data:`NOT_SUPPORTED` value - never NaN, never a silent 0. A transient failure (timeout,
  unknown error) yields ``None`` for that tick only.
* ``GPU_IS_LOST``/``RESET_REQUIRED``/``IRQ_ISSUE`` mark the GPU unhealthy and produce one
  :class:`HealthEvent`; the GPU is then reported ``healthy=False`` without further queries.
* :meth:`Nvml.sample` does every per-tick read in one pass: utilisation, cumulative PCIe bytes
  (field values 197/198; if the GPU lacks them, ``nvmlDeviceGetPcieThroughput`` integrated over
  the tick - a 20 ms sample scaled to the tick, so an estimate), replay counter, power,
  processes per GPU and MIG instance, and GPM per-MIG-instance rates on Hopper and later.
* MIG: profiles, placements and instances are discovered at run time. Profile *create IDs*
  (``info.id``, e.g. 19 for 1g.10gb on A100) differ from the query enums
  (``NVML_GPU_INSTANCE_PROFILE_1_SLICE`` = 0); every create/list call takes the ID. Instances
  are created at explicit placements, destroyed only when no process uses them, and handles and
  ``MIG-...`` UUIDs are re-enumerated after every change (MIG device indices may be sparse).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, Final, TypeAlias, TypeVar

import pynvml

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.snapshot import GpuSample, InstanceSample
from gpuguardd.model.topology import MigInstance, MigProfile

T = TypeVar("T")


class NotSupported(Enum):
    """The GPU or driver cannot answer this query (cached, asked once)."""

    NOT_SUPPORTED = "not_supported"

    def __repr__(self) -> str:
        return "NOT_SUPPORTED"


NOT_SUPPORTED: Final = NotSupported.NOT_SUPPORTED

#: A value, NOT_SUPPORTED (permanent), or None (failed this tick).
Reading: TypeAlias = T | NotSupported | None

_UNSUPPORTED_CODES = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED,
                                pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
_LOST_CODES: Final[dict[int, str]] = {
    pynvml.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
    pynvml.NVML_ERROR_RESET_REQUIRED: "reset_required",
    pynvml.NVML_ERROR_IRQ_ISSUE: "irq_issue",
}
_NO_INSTANCE = 0xFFFFFFFF
_GPM_METRICS: Final = (
    pynvml.NVML_GPM_METRIC_SM_UTIL,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
)
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HealthEvent:
    gpu: int
    kind: str  # gpu_lost | reset_required | irq_issue
    detail: str


@dataclass(frozen=True, slots=True)
class GpuStatic:
    """What does not change between ticks (until a MIG change or re-discovery)."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str  # sysfs spelling: 0000:17:00.0
    memory_bytes: int
    sm_count: int
    pcie_gen: Reading[int]
    pcie_width: Reading[int]
    pcie_max_gen: Reading[int]
    pcie_max_width: Reading[int]
    mig_enabled: bool
    gpm: bool
    instances: tuple[MigInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class NvmlTick:
    gpus: tuple[GpuSample, ...]
    instances: tuple[InstanceSample, ...]
    #: gpu -> GPU instance id (None: whole GPU / not MIG) -> pids
    processes: dict[int, dict[int | None, tuple[int, ...]]] = field(default_factory=dict)
    events: tuple[HealthEvent, ...] = ()


def _text(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """NVML's ``00000000:17:00.0`` -> sysfs ``0000:17:00.0`` (4-digit domain, lower case)."""
    dom, _, rest = nvml_bus_id.strip().lower().partition(":")
    try:
        return f"{int(dom, 16):04x}:{rest}"
    except ValueError:
        return nvml_bus_id.lower()


def _lever_error(what: str, e: pynvml.NVMLError) -> LeverError:
    code = int(e.value)
    temporary = {pynvml.NVML_ERROR_IN_USE, pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES,
                 pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_UNKNOWN,
                 pynvml.NVML_ERROR_NOT_READY}
    return LeverError(f"{what}: {e} (NVML error {code})", permanent=code not in temporary)


class Nvml:
    """NVML for the engine thread (NVML handles are not shared across threads here)."""

    def __init__(self) -> None:
        self._initialised = False
        self.init_error: str | None = None
        self._handles: list[Any] = []
        self._unsupported: set[tuple[int, str]] = set()
        self._lost: dict[int, str] = {}
        self._events: list[HealthEvent] = []
        self._profiles: dict[int, tuple[MigProfile, ...]] = {}
        self._mig_devices: dict[int, dict[int, tuple[Any, str]]] = {}
        self._gpm_samples: dict[tuple[int, int], Any] = {}
        self._pcie_est: dict[int, tuple[float, float, float]] = {}  # gpu -> (now, tx, rx)
        self.errors_total = 0

    # -- life cycle ----------------------------------------------------------------------------
    def available(self) -> bool:
        if self._initialised:
            return True
        if self.init_error is not None:
            return False
        try:
            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        except pynvml.NVMLError as e:
            self.init_error = f"NVML unavailable: {e}"
            return False
        self._initialised = True
        return True

    def count(self) -> int:
        return len(self._handles) if self.available() else 0

    def close(self) -> None:
        if not self._initialised:
            return
        for sample in self._gpm_samples.values():
            self._try(partial(pynvml.nvmlGpmSampleFree, sample))
        self._gpm_samples.clear()
        self._try(pynvml.nvmlShutdown)
        self._initialised = False

    def healthy(self, gpu: int) -> bool:
        return gpu not in self._lost

    def take_events(self) -> tuple[HealthEvent, ...]:
        ev, self._events = tuple(self._events), []
        return ev

    # -- query helpers -------------------------------------------------------------------------
    def _try(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except pynvml.NVMLError:
            self.errors_total += 1

    def _q(self, gpu: int, cap: str, fn: Callable[[], T]) -> Reading[T]:
        if gpu in self._lost:
            return None
        if (gpu, cap) in self._unsupported:
            return NOT_SUPPORTED
        try:
            return fn()
        except pynvml.NVMLLibraryMismatchError:
            self._unsupported.add((gpu, cap))
            return NOT_SUPPORTED
        except pynvml.NVMLError as e:
            return self._failed(gpu, cap, e)

    def _failed(self, gpu: int, cap: str, e: pynvml.NVMLError) -> NotSupported | None:
        code = int(e.value)
        if code in _UNSUPPORTED_CODES:
            self._unsupported.add((gpu, cap))
            return NOT_SUPPORTED
        if code in _LOST_CODES:
            self._mark_lost(gpu, _LOST_CODES[code], f"{cap}: {e}")
            return None
        self.errors_total += 1
        return None

    def _mark_lost(self, gpu: int, kind: str, detail: str) -> None:
        if gpu not in self._lost:
            self._lost[gpu] = kind
            self._events.append(HealthEvent(gpu, kind, detail))

    def supports(self, gpu: int, cap: str) -> bool:
        return (gpu, cap) not in self._unsupported

    def _handle(self, gpu: int) -> Any:
        if not self.available() or not 0 <= gpu < len(self._handles):
            raise LeverError(f"no NVML GPU {gpu}", permanent=True)
        return self._handles[gpu]

    # -- static facts --------------------------------------------------------------------------
    def static(self, gpu: int) -> GpuStatic:
        """Identity, link and MIG layout; MIG devices are re-enumerated (someone else may have
        changed the layout since we last looked)."""
        h = self._handle(gpu)
        self._mig_devices.pop(gpu, None)

        def val(r: Reading[T], default: T) -> T:
            return default if r is None or r is NOT_SUPPORTED else r

        uuid = val(self._q(gpu, "uuid", lambda: _text(pynvml.nvmlDeviceGetUUID(h))), "")
        name = val(self._q(gpu, "name", lambda: _text(pynvml.nvmlDeviceGetName(h))), "")
        bus = val(self._q(gpu, "pci", lambda: sysfs_bus_id(_text(
            pynvml.nvmlDeviceGetPciInfo_v3(h).busId))), "")
        mem = val(self._q(gpu, "memory", lambda: int(pynvml.nvmlDeviceGetMemoryInfo(h).total)), 0)
        sms = val(self._q(gpu, "attributes", lambda: int(
            pynvml.nvmlDeviceGetAttributes_v2(h).multiprocessorCount)), 0)
        mig = self.mig_enabled(gpu)
        gpm = self.gpm_supported(gpu)
        return GpuStatic(
            index=gpu, uuid=uuid, name=name, pci_bus_id=bus, memory_bytes=mem, sm_count=sms,
            pcie_gen=self._q(gpu, "pcie_gen", lambda: int(
                pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h))),
            pcie_width=self._q(gpu, "pcie_width", lambda: int(
                pynvml.nvmlDeviceGetCurrPcieLinkWidth(h))),
            pcie_max_gen=self._q(gpu, "pcie_max_gen", lambda: int(
                pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h))),
            pcie_max_width=self._q(gpu, "pcie_max_width", lambda: int(
                pynvml.nvmlDeviceGetMaxPcieLinkWidth(h))),
            mig_enabled=mig, gpm=gpm,
            instances=self.mig_instances(gpu) if mig else (),
        )

    def mig_enabled(self, gpu: int) -> bool:
        h = self._handle(gpu)
        mode = self._q(gpu, "mig_mode", lambda: pynvml.nvmlDeviceGetMigMode(h))
        return isinstance(mode, list) and int(mode[0]) == pynvml.NVML_DEVICE_MIG_ENABLE

    def gpm_supported(self, gpu: int) -> bool:
        h = self._handle(gpu)
        sup = self._q(gpu, "gpm", lambda: int(pynvml.nvmlGpmQueryDeviceSupport(h)
                                              .isSupportedDevice))
        if sup == 0:
            self._unsupported.add((gpu, "gpm"))
        return isinstance(sup, int) and sup != 0

    # -- per-tick sample -----------------------------------------------------------------------
    def sample(self, now: float) -> NvmlTick:
        gpus: list[GpuSample] = []
        instances: list[InstanceSample] = []
        procs: dict[int, dict[int | None, tuple[int, ...]]] = {}
        for gpu in range(self.count()):
            if gpu in self._lost:
                gpus.append(GpuSample(gpu, healthy=False))
                continue
            gpus.append(self._sample_gpu(gpu, now))
            p = self.processes(gpu)
            if p is not None:
                procs[gpu] = p
            if gpu not in self._lost and self.supports(gpu, "gpm") and self.mig_enabled(gpu):
                instances.extend(self._gpm(gpu))
            if gpu in self._lost:  # lost during this pass: report it consistently
                gpus[-1] = GpuSample(gpu, healthy=False)
        return NvmlTick(tuple(gpus), tuple(instances), procs, self.take_events())

    def _sample_gpu(self, gpu: int, now: float) -> GpuSample:
        h = self._handle(gpu)
        util = self._q(gpu, "utilization", lambda: pynvml.nvmlDeviceGetUtilizationRates(h))
        tx, rx = self._pcie_bytes(gpu, h, now)
        replays = self._q(gpu, "replay", lambda: int(pynvml.nvmlDeviceGetPcieReplayCounter(h)))
        power = self._q(gpu, "power", lambda: int(pynvml.nvmlDeviceGetPowerUsage(h)))
        sm_util = mem_util = None
        if util is not None and util is not NOT_SUPPORTED:
            sm_util, mem_util = util.gpu / 100.0, util.memory / 100.0
        return GpuSample(
            gpu=gpu,
            sm_util=sm_util,
            mem_util=mem_util,
            pcie_tx_bytes=tx,
            pcie_rx_bytes=rx,
            pcie_replays=replays if isinstance(replays, int) else None,
            power_w=power / 1000.0 if isinstance(power, int) else None,
            healthy=gpu not in self._lost,
        )

    def _pcie_bytes(self, gpu: int, h: Any, now: float) -> tuple[int | None, int | None]:
        if self.supports(gpu, "pcie_fields"):
            vals = self._q(gpu, "pcie_fields", lambda: pynvml.nvmlDeviceGetFieldValues(
                h, [pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES,
                    pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES]))
            if vals is None:
                return None, None
            if vals is not NOT_SUPPORTED:
                out: list[int | None] = []
                for v in vals:
                    if int(v.nvmlReturn) == pynvml.NVML_SUCCESS:
                        out.append(_field_int(v))
                    elif int(v.nvmlReturn) in _UNSUPPORTED_CODES:
                        self._unsupported.add((gpu, "pcie_fields"))
                        break
                    else:
                        out.append(None)
                else:
                    return out[0], out[1]
        # Fallback: KB/s over NVML's 20 ms window, integrated over the tick (an estimate).
        tx_kbps = self._q(gpu, "pcie_throughput", lambda: int(pynvml.nvmlDeviceGetPcieThroughput(
            h, pynvml.NVML_PCIE_UTIL_TX_BYTES)))
        rx_kbps = self._q(gpu, "pcie_throughput", lambda: int(pynvml.nvmlDeviceGetPcieThroughput(
            h, pynvml.NVML_PCIE_UTIL_RX_BYTES)))
        if not isinstance(tx_kbps, int) or not isinstance(rx_kbps, int):
            return None, None
        last_now, tx, rx = self._pcie_est.get(gpu, (now, 0.0, 0.0))
        dt = max(0.0, now - last_now)
        tx += tx_kbps * 1024.0 * dt
        rx += rx_kbps * 1024.0 * dt
        self._pcie_est[gpu] = (now, tx, rx)
        return int(tx), int(rx)

    def processes(self, gpu: int) -> dict[int | None, tuple[int, ...]] | None:
        """pids per GPU instance (``None`` key: not in a MIG instance); None if unknown."""
        h = self._handle(gpu)
        plist = self._q(gpu, "processes",
                        lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h))
        if plist is None or plist is NOT_SUPPORTED:
            return None
        out: dict[int | None, list[int]] = {}
        for p in plist:
            gi = int(getattr(p, "gpuInstanceId", _NO_INSTANCE))
            out.setdefault(None if gi == _NO_INSTANCE else gi, []).append(int(p.pid))
        return {k: tuple(sorted(v)) for k, v in out.items()}

    def _gpm(self, gpu: int) -> list[InstanceSample]:
        h = self._handle(gpu)
        out: list[InstanceSample] = []
        for gi_id in sorted(self._mig_device_map(gpu)):
            cur = self._q(gpu, "gpm", pynvml.nvmlGpmSampleAlloc)
            if cur is None or cur is NOT_SUPPORTED:
                return out
            got = self._q(gpu, "gpm", partial(pynvml.nvmlGpmMigSampleGet, h, gi_id, cur))
            if got is None or got is NOT_SUPPORTED:
                self._try(partial(pynvml.nvmlGpmSampleFree, cur))
                continue
            prev = self._gpm_samples.get((gpu, gi_id))
            self._gpm_samples[(gpu, gi_id)] = cur
            if prev is None:
                out.append(InstanceSample(gpu, gi_id))  # the first sample only starts the window
                continue
            mg = pynvml.c_nvmlGpmMetricsGet_t()
            mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            mg.numMetrics = len(_GPM_METRICS)
            mg.sample1 = prev
            mg.sample2 = cur
            for i, m in enumerate(_GPM_METRICS):
                mg.metrics[i].metricId = m
            res = self._q(gpu, "gpm", partial(pynvml.nvmlGpmMetricsGet, mg))
            self._try(partial(pynvml.nvmlGpmSampleFree, prev))
            if res is None or res is NOT_SUPPORTED:
                out.append(InstanceSample(gpu, gi_id))
                continue
            v = [float(mg.metrics[i].value) if int(mg.metrics[i].nvmlReturn) == 0 else None
                 for i in range(len(_GPM_METRICS))]
            out.append(InstanceSample(
                gpu, gi_id,
                sm_activity=v[0] / 100.0 if v[0] is not None else None,
                dram_activity=v[1] / 100.0 if v[1] is not None else None,
                pcie_tx_bps=v[2] * _MIB if v[2] is not None else None,
                pcie_rx_bps=v[3] * _MIB if v[3] is not None else None,
            ))
        return out

    # -- MIG -----------------------------------------------------------------------------------
    def mig_profiles(self, gpu: int) -> tuple[MigProfile, ...]:
        """GPU-instance profiles this GPU offers, with their create IDs and placements."""
        if gpu in self._profiles:
            return self._profiles[gpu]
        h = self._handle(gpu)
        out: list[MigProfile] = []
        for enum in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, enum)
            except pynvml.NVMLError as e:
                if int(e.value) in _LOST_CODES:
                    self._failed(gpu, "mig_profiles", e)
                    return ()
                continue  # NOT_SUPPORTED / INVALID_ARGUMENT: this GPU has no such profile
            pid = int(info.id)
            arr = (pynvml.c_nvmlGpuInstancePlacement_t * max(8, int(info.instanceCount)))()
            n = ctypes.c_uint(len(arr))
            try:
                pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(h, pid, arr, ctypes.byref(n))
            except pynvml.NVMLError:
                continue
            starts = tuple(int(arr[i].start) for i in range(n.value))
            size = int(arr[0].size) if n.value else 0
            mem = int(info.memorySizeMB) * _MIB
            name = _text(getattr(info, "name", b"")).removeprefix("MIG ").strip()
            if not name:
                name = f"{int(info.sliceCount)}g.{round(mem / 1e9)}gb"
            out.append(MigProfile(name=name, create_id=pid, compute_slices=int(info.sliceCount),
                                  memory_slices=size, sm_count=int(info.multiprocessorCount),
                                  memory_bytes=mem, placements=starts, size=size))
        self._profiles[gpu] = tuple(out)
        return self._profiles[gpu]

    def _profile(self, gpu: int, name: str) -> MigProfile:
        for p in self.mig_profiles(gpu):
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.mig_profiles(gpu)) or "none"
        raise LeverError(f"GPU {gpu} has no MIG profile {name!r} (has: {known})", permanent=True)

    def _mig_device_map(self, gpu: int) -> dict[int, tuple[Any, str]]:
        if gpu not in self._mig_devices:
            self._mig_devices[gpu] = self._enumerate_mig_devices(gpu)
        return self._mig_devices[gpu]

    def _enumerate_mig_devices(self, gpu: int) -> dict[int, tuple[Any, str]]:
        """gi_id -> (MIG device handle, MIG-... UUID). Indices can be sparse after destroys."""
        h = self._handle(gpu)
        out: dict[int, tuple[Any, str]] = {}
        try:
            n = int(pynvml.nvmlDeviceGetMaxMigDeviceCount(h))
        except pynvml.NVMLError as e:
            self._failed(gpu, "mig_devices", e)
            return out
        for i in range(n):
            try:
                mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
                gi = int(pynvml.nvmlDeviceGetGpuInstanceId(mh))
                out[gi] = (mh, _text(pynvml.nvmlDeviceGetUUID(mh)))
            except pynvml.NVMLError as e:
                if int(e.value) in _LOST_CODES:
                    self._failed(gpu, "mig_devices", e)
                    return out
                continue  # NOT_FOUND: an empty slot
        return out

    def mig_instances(self, gpu: int) -> tuple[MigInstance, ...]:
        h = self._handle(gpu)
        devs = self._mig_device_map(gpu)
        out: list[MigInstance] = []
        for prof in self.mig_profiles(gpu):
            arr = (pynvml.c_nvmlGpuInstance_t * max(8, len(prof.placements)))()
            n = ctypes.c_uint(0)
            try:
                pynvml.nvmlDeviceGetGpuInstances(h, prof.create_id, arr, ctypes.byref(n))
            except pynvml.NVMLError:
                continue
            for i in range(n.value):
                try:
                    info = pynvml.nvmlGpuInstanceGetInfo(arr[i])
                except pynvml.NVMLError:
                    continue
                gi = int(info.id)
                out.append(MigInstance(gpu=gpu, gi_id=gi, profile=prof.name,
                                       start=int(info.placement.start),
                                       size=int(info.placement.size),
                                       uuid=devs.get(gi, (None, ""))[1]))
        return tuple(sorted(out, key=lambda m: m.start))

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance:
        """Create a GPU instance of ``profile`` at memory slice ``start`` plus its full-size
        compute instance; returns it with its new ``MIG-...`` UUID."""
        h = self._handle(gpu)
        if not self.mig_enabled(gpu):
            raise LeverError(f"MIG is not enabled on GPU {gpu}", permanent=True)
        prof = self._profile(gpu, profile)
        if start not in prof.placements:
            raise LeverError(f"{profile} cannot start at slice {start} on GPU {gpu} "
                             f"(valid: {list(prof.placements)})", permanent=True)
        place = pynvml.c_nvmlGpuInstancePlacement_t(start, prof.size)
        try:
            gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, prof.create_id,
                                                                 ctypes.byref(place))
        except pynvml.NVMLError as e:
            raise _lever_error(f"create {profile}@{start} on GPU {gpu}", e) from None
        try:
            ci_id = self._full_ci_profile(gi)
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_id)
        except pynvml.NVMLError as e:
            self._try(lambda: pynvml.nvmlGpuInstanceDestroy(gi))  # no half-made instance
            self._mig_devices.pop(gpu, None)
            raise _lever_error(f"create compute instance in {profile}@{start}", e) from None
        gi_id = int(pynvml.nvmlGpuInstanceGetInfo(gi).id)
        self._mig_devices[gpu] = self._enumerate_mig_devices(gpu)
        uuid = self._mig_devices[gpu].get(gi_id, (None, ""))[1]
        return MigInstance(gpu=gpu, gi_id=gi_id, profile=prof.name, start=start,
                           size=prof.size, uuid=uuid)

    @staticmethod
    def _full_ci_profile(gi: Any) -> int:
        best: tuple[int, int] | None = None  # (slices, id)
        for enum in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, enum, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
            except pynvml.NVMLError:
                continue
            cand = (int(info.sliceCount), int(info.id))
            if best is None or cand[0] > best[0]:
                best = cand
        if best is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return best[1]

    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        """Destroy GPU instance ``gi_id`` and its compute instances. Refuses (temporary
        LeverError) while any process runs on it; a missing instance is already done."""
        h = self._handle(gpu)
        procs = self.processes(gpu)
        if procs is None:
            raise LeverError(f"GPU {gpu}: cannot list processes; not destroying gi {gi_id}")
        if procs.get(gi_id):
            raise LeverError(f"GPU {gpu} gi {gi_id} in use by pids {list(procs[gi_id])}",
                             retry_after_s=10.0)
        try:
            gi = pynvml.nvmlDeviceGetGpuInstanceById(h, gi_id)
        except pynvml.NVMLError as e:
            if int(e.value) in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                return
            raise _lever_error(f"find gi {gi_id} on GPU {gpu}", e) from None
        try:
            for enum in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                try:
                    info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                        gi, enum, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
                except pynvml.NVMLError:
                    continue
                arr = (pynvml.c_nvmlComputeInstance_t * max(8, int(info.instanceCount)))()
                n = ctypes.c_uint(0)
                pynvml.nvmlGpuInstanceGetComputeInstances(gi, int(info.id), arr,
                                                          ctypes.byref(n))
                for i in range(n.value):
                    pynvml.nvmlComputeInstanceDestroy(arr[i])
            pynvml.nvmlGpuInstanceDestroy(gi)
        except pynvml.NVMLError as e:
            raise _lever_error(f"destroy gi {gi_id} on GPU {gpu}", e) from None
        finally:
            self._mig_devices[gpu] = self._enumerate_mig_devices(gpu)
            for key in [k for k in self._gpm_samples if k == (gpu, gi_id)]:
                s = self._gpm_samples.pop(key)
                self._try(partial(pynvml.nvmlGpmSampleFree, s))

    def mig_uuid(self, gpu: int, gi_id: int) -> str | None:
        entry = self._mig_device_map(gpu).get(gi_id)
        return entry[1] if entry else None


def _field_int(v: Any) -> int | None:
    t = int(v.valueType)
    val = v.value
    if t == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return int(val.ullVal)
    if t == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return int(val.sllVal)
    if t == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return int(val.ulVal)
    if t == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return int(val.uiVal)
    if t == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
        return int(val.siVal)
    if t == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return int(val.dVal)
    return None
