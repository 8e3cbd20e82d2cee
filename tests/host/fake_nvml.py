"""A fake NVML *C library* for driving the real ``pynvml`` module in tests.

``pynvml`` looks every C function up with ``getattr(nvmlLib, name)`` and calls it with ctypes
arguments (values, ``byref`` pointers, arrays). :class:`FakeNvmlLib` provides those functions:
each reads its ctypes arguments, writes results through the pointers and returns an NVML return
code, like ``libnvidia-ml.so``. Nothing of pynvml's Python layer is replaced.

Modelled: an A100-SXM4-80GB with MIG (real profile IDs, placements, sparse MIG device indices,
``IN_USE`` on destroy while a process runs, no whole-GPU utilisation in MIG mode, no GPM), an
H100 with GPM per MIG instance, a GPU without the PCIe byte fields, and lost GPUs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml

OK = pynvml.NVML_SUCCESS
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
INVALID = pynvml.NVML_ERROR_INVALID_ARGUMENT
NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
IN_USE = pynvml.NVML_ERROR_IN_USE
INSUFFICIENT_SIZE = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
INSUFFICIENT_RESOURCES = pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
GiB = 1024**3


@dataclass(frozen=True)
class Profile:
    enum: int  # NVML_GPU_INSTANCE_PROFILE_* (query)
    id: int  # create ID
    name: str
    slices: int  # compute slices
    size: int  # memory slices occupied
    sms: int
    memory_mb: int
    placements: tuple[int, ...]


# A100-SXM4-80GB, as nvidia-smi mig -lgip / -lgipp report them.
A100_PROFILES = (
    Profile(0, 19, "MIG 1g.10gb", 1, 1, 14, 9728, (0, 1, 2, 3, 4, 5, 6)),
    Profile(7, 20, "MIG 1g.10gb+me", 1, 1, 14, 9728, (0, 1, 2, 3, 4, 5, 6)),
    Profile(9, 15, "MIG 1g.20gb", 1, 2, 14, 19968, (0, 2, 4, 6)),
    Profile(1, 14, "MIG 2g.20gb", 2, 2, 28, 19968, (0, 2, 4)),
    Profile(2, 9, "MIG 3g.40gb", 3, 4, 42, 40192, (0, 4)),
    Profile(3, 5, "MIG 4g.40gb", 4, 4, 56, 40192, (0,)),
    Profile(4, 0, "MIG 7g.80gb", 7, 8, 98, 80896, (0,)),
)
H100_PROFILES = (
    Profile(0, 19, "MIG 1g.10gb", 1, 1, 16, 9984, (0, 1, 2, 3, 4, 5, 6)),
    Profile(1, 14, "MIG 2g.20gb", 2, 2, 32, 20096, (0, 2, 4)),
    Profile(2, 9, "MIG 3g.40gb", 3, 4, 60, 40320, (0, 4)),
    Profile(4, 0, "MIG 7g.80gb", 7, 8, 132, 80880, (0,)),
)
CI_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}  # compute-instance profile enum -> slices


@dataclass
class Gi:
    id: int
    profile: Profile
    start: int
    mig_index: int
    uuid: str
    cis: dict[int, int] = field(default_factory=dict)  # ci id -> ci profile enum
    gpm_counter: float = 0.0


@dataclass
class Proc:
    pid: int
    gi: int | None = None
    ci: int | None = None


@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus_id: str
    memory_mb: int
    sms: int
    profiles: tuple[Profile, ...] = ()
    mig: bool = False
    gpm: bool = False
    pcie_fields: bool = True
    gen: int = 4
    width: int = 16
    util: tuple[int, int] = (37, 12)
    pcie_tx: int = 1_000_000
    pcie_rx: int = 5_000_000
    pcie_kbps: tuple[int, int] = (1000, 2000)
    replays: int = 3
    power_mw: int = 250_000
    lost: bool = False
    max_mig: int = 7
    gis: dict[int, Gi] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    generation: int = 0

    def add_gi(self, profile_name: str, start: int) -> Gi:
        prof = next(p for p in self.profiles if p.name == f"MIG {profile_name}")
        gi_id = next(i for i in range(1, 64) if i not in self.gis)
        used = {g.mig_index for g in self.gis.values()}
        idx = next(i for i in range(self.max_mig) if i not in used)
        self.generation += 1
        gi = Gi(gi_id, prof, start, idx,
                f"MIG-{self.uuid[4:12]}-{gi_id:04x}-{self.generation:04x}-0000-000000000000")
        gi.cis[0] = next(e for e, s in CI_SLICES.items() if s == prof.slices)
        self.gis[gi_id] = gi
        return gi


def a100(index: int = 0) -> FakeGpu:
    return FakeGpu("NVIDIA A100-SXM4-80GB", f"GPU-a100{index:04x}-1111-2222-3333-444444444444",
                   f"00000000:{0x07 + index * 0x10:02X}:00.0", 81920, 108, A100_PROFILES,
                   mig=True)


def h100(index: int = 0) -> FakeGpu:
    return FakeGpu("NVIDIA H100 80GB HBM3", f"GPU-h100{index:04x}-1111-2222-3333-444444444444",
                   f"00000000:{0x18 + index * 0x10:02X}:00.0", 81559, 132, H100_PROFILES,
                   mig=True, gpm=True, gen=5)


# -- ctypes plumbing --------------------------------------------------------------------------
def _obj(arg: Any) -> Any:
    """The ctypes object behind a ``byref()`` argument (or the argument itself)."""
    return getattr(arg, "_obj", arg)


def _addr(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _set_ptr(ref: Any, value: int) -> None:
    target = _obj(ref)
    ctypes.c_void_p.from_address(ctypes.addressof(target)).value = value


def _int(v: Any) -> int:
    return int(getattr(v, "value", v))


def _put_str(buf: Any, s: str) -> None:
    data = s.encode()
    ctypes.memmove(buf, data, len(data))
    buf[len(data)] = b"\0"


class _CFunc:
    """A C function: callable, and pynvml may set ``restype``/``argtypes`` on it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


DEV, MIGDEV, GI, CI, GPMS = 0x10000, 0x20000, 0x30000, 0x40000, 0x50000


class FakeNvmlLib:
    def __init__(self, gpus: list[FakeGpu], *, missing: frozenset[str] = frozenset()) -> None:
        self.gpus = gpus
        self.missing = missing
        self.calls: dict[str, int] = {}
        self.initialised = False
        self.gpm_samples: dict[int, tuple[int, int, float, float]] = {}  # ptr -> (gpu, gi, t, c)
        self._next_sample = 1
        self.clock = 0.0

    def __getattr__(self, name: str) -> _CFunc:
        impl = getattr(type(self), "c_" + name, None)
        if impl is None or name in self.missing:
            raise AttributeError(name)

        def counted(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return impl(self, *args)

        return _CFunc(counted)

    # -- handle decoding -------------------------------------------------------------------
    def _gpu(self, h: Any) -> FakeGpu | None:
        a = _addr(h)
        if DEV <= a < DEV + len(self.gpus):
            return self.gpus[a - DEV]
        return None

    def _mig(self, h: Any) -> tuple[FakeGpu, Gi] | None:
        a = _addr(h) - MIGDEV
        if 0 <= a < 0x10000:
            g = self.gpus[a // 256]
            gi = g.gis.get(a % 256)
            if gi is not None:
                return g, gi
        return None

    def _gi(self, h: Any) -> tuple[FakeGpu, Gi] | None:
        a = _addr(h) - GI
        if 0 <= a < 0x10000:
            g = self.gpus[a // 256]
            gi = g.gis.get(a % 256)
            if gi is not None:
                return g, gi
        return None

    # -- init ------------------------------------------------------------------------------
    def c_nvmlInitWithFlags(self, flags: Any) -> int:
        self.initialised = True
        return OK

    def c_nvmlShutdown(self) -> int:
        self.initialised = False
        return OK

    def c_nvmlErrorString(self, code: Any) -> bytes:
        return f"fake NVML error {int(code)}".encode()

    def c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        _obj(count).value = len(self.gpus)
        return OK

    def c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> int:
        i = _int(index)
        if not 0 <= i < len(self.gpus):
            return INVALID
        _set_ptr(out, DEV + i)
        return OK

    # -- identity --------------------------------------------------------------------------
    def c_nvmlDeviceGetUUID(self, h: Any, buf: Any, size: Any) -> int:
        g = self._gpu(h)
        if g is not None:
            if g.lost:
                return GPU_IS_LOST
            _put_str(buf, g.uuid)
            return OK
        m = self._mig(h)
        if m is None:
            return INVALID
        _put_str(buf, m[1].uuid)
        return OK

    def c_nvmlDeviceGetName(self, h: Any, buf: Any, size: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _put_str(buf, g.name)
        return OK

    def c_nvmlDeviceGetPciInfo_v3(self, h: Any, info: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(info).busId = g.bus_id.encode()
        return OK

    def c_nvmlDeviceGetMemoryInfo(self, h: Any, mem: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(mem).total = g.memory_mb * 1024 * 1024
        return OK

    def c_nvmlDeviceGetAttributes_v2(self, h: Any, attrs: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(attrs).multiprocessorCount = g.sms
        return OK

    def _link(self, h: Any, out: Any, value: Callable[[FakeGpu], int]) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if g.lost:
            return GPU_IS_LOST
        _obj(out).value = value(g)
        return OK

    def c_nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.gen)

    def c_nvmlDeviceGetCurrPcieLinkWidth(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.width)

    def c_nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.gen)

    def c_nvmlDeviceGetMaxPcieLinkWidth(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.width)

    # -- counters --------------------------------------------------------------------------
    def c_nvmlDeviceGetUtilizationRates(self, h: Any, util: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if g.lost:
            return GPU_IS_LOST
        if g.mig:
            return NOT_SUPPORTED  # no whole-GPU utilisation in MIG mode
        _obj(util).gpu, _obj(util).memory = g.util
        return OK

    def c_nvmlDeviceGetFieldValues(self, h: Any, n: Any, values: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if g.lost:
            return GPU_IS_LOST
        arr = _obj(values)
        for i in range(_int(n)):
            v = arr[i]
            if not g.pcie_fields:
                v.nvmlReturn = NOT_SUPPORTED
                continue
            fid = int(v.fieldId)
            if fid == pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES:
                v.value.ullVal = g.pcie_tx
            elif fid == pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES:
                v.value.ullVal = g.pcie_rx
            else:
                v.nvmlReturn = NOT_SUPPORTED
                continue
            v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            v.nvmlReturn = OK
        return OK

    def c_nvmlDeviceGetPcieThroughput(self, h: Any, counter: Any, out: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(out).value = g.pcie_kbps[_int(counter)]
        return OK

    def c_nvmlDeviceGetPcieReplayCounter(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.replays)

    def c_nvmlDeviceGetPowerUsage(self, h: Any, out: Any) -> int:
        return self._link(h, out, lambda g: g.power_mw)

    def c_nvmlDeviceGetComputeRunningProcesses_v3(self, h: Any, count: Any, arr: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if g.lost:
            return GPU_IS_LOST
        c = _obj(count)
        if not g.procs:
            c.value = 0
            return OK
        if arr is None or c.value < len(g.procs):
            c.value = len(g.procs)
            return INSUFFICIENT_SIZE
        for i, p in enumerate(g.procs):
            arr[i].pid = p.pid
            arr[i].usedGpuMemory = GiB
            arr[i].gpuInstanceId = 0xFFFFFFFF if p.gi is None else p.gi
            arr[i].computeInstanceId = 0xFFFFFFFF if p.ci is None else p.ci
        c.value = len(g.procs)
        return OK

    # -- MIG -------------------------------------------------------------------------------
    def c_nvmlDeviceGetMigMode(self, h: Any, cur: Any, pending: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if not g.profiles:
            return NOT_SUPPORTED
        _obj(cur).value = _obj(pending).value = int(g.mig)
        return OK

    def c_nvmlDeviceGetGpuInstanceProfileInfoV(self, h: Any, enum: Any, info: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        if not g.profiles:
            return NOT_SUPPORTED
        p = next((p for p in g.profiles if p.enum == _int(enum)), None)
        if p is None:
            return INVALID
        o = _obj(info)
        o.id, o.sliceCount, o.instanceCount = p.id, p.slices, len(p.placements)
        o.multiprocessorCount, o.memorySizeMB, o.name = p.sms, p.memory_mb, p.name.encode()
        return OK

    def _profile_by_id(self, g: FakeGpu, pid: Any) -> Profile | None:
        return next((p for p in g.profiles if p.id == _int(pid)), None)

    def c_nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, h: Any, pid: Any, arr: Any,
                                                        count: Any) -> int:
        g = self._gpu(h)
        p = self._profile_by_id(g, pid) if g else None
        if g is None or p is None:
            return INVALID
        c = _obj(count)
        if arr is None:
            c.value = len(p.placements)
            return OK
        if c.value < len(p.placements):
            return INSUFFICIENT_SIZE
        for i, s in enumerate(p.placements):
            arr[i].start, arr[i].size = s, p.size
        c.value = len(p.placements)
        return OK

    def c_nvmlDeviceGetGpuInstances(self, h: Any, pid: Any, arr: Any, count: Any) -> int:
        g = self._gpu(h)
        p = self._profile_by_id(g, pid) if g else None
        if g is None or p is None:
            return INVALID
        mine = [gi for gi in g.gis.values() if gi.profile.id == p.id]
        for i, gi in enumerate(mine):
            ctypes.c_void_p.from_address(ctypes.addressof(arr) + i * ctypes.sizeof(
                ctypes.c_void_p)).value = GI + self.gpus.index(g) * 256 + gi.id
        _obj(count).value = len(mine)
        return OK

    def c_nvmlGpuInstanceGetInfo(self, gih: Any, info: Any) -> int:
        m = self._gi(gih)
        if m is None:
            return INVALID
        _, gi = m
        o = _obj(info)
        o.id, o.profileId = gi.id, gi.profile.id
        o.placement.start, o.placement.size = gi.start, gi.profile.size
        return OK

    def c_nvmlDeviceGetGpuInstanceById(self, h: Any, gi_id: Any, out: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        gi = g.gis.get(_int(gi_id))
        if gi is None:
            return NOT_FOUND
        _set_ptr(out, GI + self.gpus.index(g) * 256 + gi.id)
        return OK

    def c_nvmlDeviceCreateGpuInstanceWithPlacement(self, h: Any, pid: Any, place: Any,
                                                   out: Any) -> int:
        g = self._gpu(h)
        p = self._profile_by_id(g, pid) if g else None
        if g is None or p is None:
            return INVALID
        if not g.mig:
            return NOT_SUPPORTED
        pl = _obj(place)
        if pl.start not in p.placements or pl.size != p.size:
            return INVALID
        want = set(range(pl.start, pl.start + p.size))
        for other in g.gis.values():
            if want & set(range(other.start, other.start + other.profile.size)):
                return INSUFFICIENT_RESOURCES
        gi = g.add_gi(p.name.removeprefix("MIG "), pl.start)
        gi.cis.clear()  # a fresh GPU instance has no compute instance yet
        _set_ptr(out, GI + self.gpus.index(g) * 256 + gi.id)
        return OK

    def c_nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, gih: Any, enum: Any, eng: Any,
                                                        info: Any) -> int:
        m = self._gi(gih)
        if m is None:
            return INVALID
        slices = CI_SLICES.get(_int(enum))
        if slices is None or slices > m[1].profile.slices:
            return NOT_SUPPORTED
        o = _obj(info)
        o.id = _int(enum)  # CI profile ids happen to equal their enums
        o.sliceCount = slices
        o.instanceCount = m[1].profile.slices // slices
        return OK

    def c_nvmlGpuInstanceCreateComputeInstance(self, gih: Any, ci_pid: Any, out: Any) -> int:
        m = self._gi(gih)
        if m is None:
            return INVALID
        g, gi = m
        ci_id = len(gi.cis)
        gi.cis[ci_id] = _int(ci_pid)
        _set_ptr(out, CI + self.gpus.index(g) * 65536 + gi.id * 256 + ci_id)
        return OK

    def c_nvmlGpuInstanceGetComputeInstances(self, gih: Any, ci_pid: Any, arr: Any,
                                             count: Any) -> int:
        m = self._gi(gih)
        if m is None:
            return INVALID
        g, gi = m
        mine = [c for c, prof in gi.cis.items() if prof == _int(ci_pid)]
        for i, c in enumerate(mine):
            ctypes.c_void_p.from_address(ctypes.addressof(arr) + i * ctypes.sizeof(
                ctypes.c_void_p)).value = CI + self.gpus.index(g) * 65536 + gi.id * 256 + c
        _obj(count).value = len(mine)
        return OK

    def c_nvmlComputeInstanceDestroy(self, cih: Any) -> int:
        a = _addr(cih) - CI
        g = self.gpus[a // 65536]
        gi = g.gis.get((a % 65536) // 256)
        ci = a % 256
        if gi is None or ci not in gi.cis:
            return INVALID
        if any(p.gi == gi.id and p.ci == ci for p in g.procs):
            return IN_USE
        del gi.cis[ci]
        return OK

    def c_nvmlGpuInstanceDestroy(self, gih: Any) -> int:
        m = self._gi(gih)
        if m is None:
            return INVALID
        g, gi = m
        if gi.cis or any(p.gi == gi.id for p in g.procs):
            return IN_USE
        del g.gis[gi.id]
        return OK

    def c_nvmlDeviceGetMaxMigDeviceCount(self, h: Any, out: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(out).value = g.max_mig if g.mig else 0
        return OK

    def c_nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, index: Any, out: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        gi = next((x for x in g.gis.values() if x.mig_index == _int(index) and x.cis), None)
        if gi is None:
            return NOT_FOUND
        _set_ptr(out, MIGDEV + self.gpus.index(g) * 256 + gi.id)
        return OK

    def c_nvmlDeviceGetGpuInstanceId(self, h: Any, out: Any) -> int:
        m = self._mig(h)
        if m is None:
            return NOT_SUPPORTED
        _obj(out).value = m[1].id
        return OK

    # -- GPM -------------------------------------------------------------------------------
    def c_nvmlGpmQueryDeviceSupport(self, h: Any, sup: Any) -> int:
        g = self._gpu(h)
        if g is None:
            return INVALID
        _obj(sup).isSupportedDevice = int(g.gpm)
        return OK

    def c_nvmlGpmSampleAlloc(self, out: Any) -> int:
        ptr = GPMS + self._next_sample
        self._next_sample += 1
        self.gpm_samples[ptr] = (-1, -1, 0.0, 0.0)
        _set_ptr(out, ptr)
        return OK

    def c_nvmlGpmSampleFree(self, s: Any) -> int:
        return OK if self.gpm_samples.pop(_addr(s), None) is not None else INVALID

    def c_nvmlGpmMigSampleGet(self, h: Any, gi_id: Any, s: Any) -> int:
        g = self._gpu(h)
        if g is None or _addr(s) not in self.gpm_samples:
            return INVALID
        if not g.gpm:
            return NOT_SUPPORTED
        gi = g.gis.get(_int(gi_id))
        if gi is None:
            return NOT_FOUND
        self.gpm_samples[_addr(s)] = (self.gpus.index(g), gi.id, self.clock, gi.gpm_counter)
        return OK

    def c_nvmlGpmMetricsGet(self, mg: Any) -> int:
        o = _obj(mg)
        a = self.gpm_samples.get(_addr(o.sample1))
        b = self.gpm_samples.get(_addr(o.sample2))
        if a is None or b is None or a[:2] != b[:2] or b[2] <= a[2]:
            return INVALID
        rate = (b[3] - a[3]) / (b[2] - a[2])  # busy fraction of the instance in [0, 1]
        for i in range(o.numMetrics):
            m = o.metrics[i]
            m.nvmlReturn = OK
            if m.metricId == pynvml.NVML_GPM_METRIC_SM_UTIL:
                m.value = 100.0 * rate
            elif m.metricId == pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL:
                m.value = 50.0 * rate
            elif m.metricId in (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
                                pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC):
                m.value = 1000.0 * rate  # MiB/s
            else:
                m.nvmlReturn = NOT_SUPPORTED
        return OK


def install(monkeypatch: Any, lib: FakeNvmlLib) -> Iterator[FakeNvmlLib]:
    """Make ``pynvml`` use ``lib`` as its C library for the duration of a test."""
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    yield lib
