"""HAMi-core shared region: read limits and per-process usage, write memory/compute limits.

HAMi-core (the CUDA interposer of HAMi vGPU) keeps one ``shared_region_t`` per container in a
file, host side ``<root>/usr/local/vgpu/containers/<podUID>_<container>/<uuid>.cache``. The layout
below was read from ``src/multiprocess/multiprocess_memory_limit.h`` (major version 1, minor 1 and
2: same offsets and size on 64-bit glibc, where ``sem_t`` is 32 bytes):

    offset      field                                   type
    0           initialized_flag (= magic 19920718)     int32
    4 / 8       major_version / minor_version           uint32
    12          sm_init_flag                            int32
    16          owner_pid                               size_t
    24          sem                                     sem_t (32 bytes)
    56          device_num                              uint64
    64          uuids[16]                               char[96] each
    1600        limit[16]       memory limit, bytes     uint64   (live: next allocation)
    1728        sm_limit[16]    compute limit, percent  uint64   (read once per process start)
    1856        procs[1024]     shrreg_proc_slot_t      1960 bytes each
    2008896     proc_num, utilization_switch, recent_kernel, priority (int32 each), ...
    2008952     end of file (``ftruncate(fd, sizeof(shared_region_t))``)

    proc slot:  0 pid (int32), 4 hostpid (int32), 8 used[16] (64 bytes each; ``total`` at +32),
                1032 monitorused[16] (uint64), 1160 device_util[16] (48 bytes; ``sm_util`` at
                +16), 1928 status (int32)

Only ``limit[i]`` and ``sm_limit[i]`` are ever written, 8 bytes with ``pwrite`` at their offset,
then read back. ``utilization_switch`` and ``recent_kernel`` belong to HAMi's monitor and are never
touched. Any other magic, major version or file size is refused before anything is written.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = 19920718
MAJOR = 1
KNOWN_MINORS = (1, 2)
MAX_DEVICES = 16
MAX_PROCS = 1024
REGION_SIZE = 2008952
OFF_MAGIC, OFF_MAJOR, OFF_MINOR = 0, 4, 8
OFF_DEVICE_NUM = 56
OFF_UUIDS, UUID_LEN = 64, 96
OFF_LIMIT = 1600
OFF_SM_LIMIT = 1728
OFF_PROCS, SLOT_SIZE = 1856, 1960
OFF_PROC_NUM = OFF_PROCS + MAX_PROCS * SLOT_SIZE
SLOT_USED, USED_STRIDE, USED_TOTAL = 8, 64, 32
SLOT_MONITOR = 1032
SLOT_UTIL, UTIL_STRIDE, UTIL_SM = 1160, 48, 16
SLOT_STATUS = 1928
HEADER_LEN = OFF_PROCS
CONTAINERS_DIR = "usr/local/vgpu/containers"
MIB = 1 << 20


class HamiError(Exception):
    """The region cannot be used; ``permanent`` errors mark the lever unavailable."""

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class ProcUsage:
    slot: int
    pid: int
    hostpid: int
    status: int
    used_bytes: tuple[int, ...]  # per device (``used[i].total``)
    monitor_bytes: tuple[int, ...]  # per device (``monitorused[i]``)
    sm_util: tuple[int, ...]  # per device (``device_util[i].sm_util``)


@dataclass(frozen=True, slots=True)
class Region:
    major: int
    minor: int
    device_num: int
    uuids: tuple[str, ...]
    limit_bytes: tuple[int, ...]
    sm_limit_pct: tuple[int, ...]
    proc_num: int
    procs: tuple[ProcUsage, ...]

    def used_bytes(self, device: int) -> int:
        return sum(p.used_bytes[device] for p in self.procs)


@dataclass(frozen=True, slots=True)
class WriteResult:
    field: str
    device: int
    old: int
    new: int
    changed: bool


def container_dir(root: Path, pod_uid: str, container: str) -> Path:
    for part in (pod_uid, container):
        if not part or "/" in part or part in (".", ".."):
            raise HamiError(f"bad pod uid or container name {part!r}")
    return root / CONTAINERS_DIR / f"{pod_uid}_{container}"


def region_files(root: Path, pod_uid: str, container: str) -> list[Path]:
    return sorted(container_dir(root, pod_uid, container).glob("*.cache"))


def _validate(fd: int, path: Path) -> tuple[int, int, bytes]:
    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER_LEN, 0)
    if len(head) < 12:
        raise HamiError(f"{path}: {size} bytes, too short for a HAMi-core shared region")
    magic, major, minor = struct.unpack_from("<iII", head, 0)
    if magic != MAGIC:
        raise HamiError(f"{path}: magic {magic} != {MAGIC}: not an initialised HAMi-core region",
                        permanent=False)
    if major != MAJOR or minor not in KNOWN_MINORS:
        raise HamiError(f"{path}: layout version {major}.{minor} is unknown (known: "
                        f"{', '.join(f'{MAJOR}.{m}' for m in KNOWN_MINORS)}); refusing to touch it")
    if size != REGION_SIZE:
        raise HamiError(f"{path}: size {size} != {REGION_SIZE} bytes expected for version "
                        f"{major}.{minor}; refusing an unknown layout")
    return major, minor, head


class HamiRegion:
    """One container's region file. Keeps the values it found before its first write to each
    field so that :meth:`restore` can put them back."""

    def __init__(self, path: Path):
        self.path = path
        self.originals: dict[tuple[str, int], int] = {}

    def read(self, *, procs: bool = True) -> Region:
        fd = self._open(os.O_RDONLY)
        try:
            major, minor, head = _validate(fd, self.path)
            body = os.pread(fd, REGION_SIZE - HEADER_LEN, HEADER_LEN) if procs else b""
        finally:
            os.close(fd)
        (device_num,) = struct.unpack_from("<Q", head, OFF_DEVICE_NUM)
        uuids = tuple(
            head[OFF_UUIDS + i * UUID_LEN: OFF_UUIDS + (i + 1) * UUID_LEN]
            .split(b"\0", 1)[0].decode("utf-8", "replace")
            for i in range(min(device_num, MAX_DEVICES))
        )
        limits = struct.unpack_from(f"<{MAX_DEVICES}Q", head, OFF_LIMIT)
        sm = struct.unpack_from(f"<{MAX_DEVICES}Q", head, OFF_SM_LIMIT)
        proc_num = 0
        found: list[ProcUsage] = []
        if procs:
            (proc_num,) = struct.unpack_from("<i", body, OFF_PROC_NUM - HEADER_LEN)
            for slot in range(MAX_PROCS):
                base = slot * SLOT_SIZE
                pid, hostpid = struct.unpack_from("<ii", body, base)
                if pid == 0:
                    continue
                found.append(ProcUsage(
                    slot=slot, pid=pid, hostpid=hostpid,
                    status=struct.unpack_from("<i", body, base + SLOT_STATUS)[0],
                    used_bytes=tuple(
                        struct.unpack_from("<Q", body, base + SLOT_USED + i * USED_STRIDE
                                           + USED_TOTAL)[0] for i in range(MAX_DEVICES)),
                    monitor_bytes=struct.unpack_from(f"<{MAX_DEVICES}Q", body,
                                                     base + SLOT_MONITOR),
                    sm_util=tuple(
                        struct.unpack_from("<Q", body, base + SLOT_UTIL + i * UTIL_STRIDE
                                           + UTIL_SM)[0] for i in range(MAX_DEVICES)),
                ))
        return Region(major, minor, int(device_num), uuids, tuple(limits), tuple(sm), proc_num,
                      tuple(found))

    def set_memory_limit(self, device: int, limit_bytes: int) -> WriteResult:
        """Live: HAMi-core checks ``limit[i]`` at the next allocation."""
        if limit_bytes <= 0:
            raise HamiError(f"memory limit must be > 0, got {limit_bytes}", permanent=False)
        return self._write("limit", OFF_LIMIT, device, limit_bytes)

    def set_sm_limit(self, device: int, pct: int) -> WriteResult:
        """Applies at the next process start (HAMi-core reads it once): restart the tenant."""
        if not 1 <= pct <= 100:
            raise HamiError(f"sm limit must be 1..100 %, got {pct}", permanent=False)
        return self._write("sm_limit", OFF_SM_LIMIT, device, pct)

    def restore(self) -> list[WriteResult]:
        out = []
        for (name, device), value in sorted(self.originals.items()):
            off = OFF_LIMIT if name == "limit" else OFF_SM_LIMIT
            out.append(self._write(name, off, device, value))
        return out

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise HamiError(f"{self.path}: no such region file", permanent=False) from None
        except OSError as e:
            raise HamiError(f"{self.path}: cannot open: {e}") from None

    def _write(self, name: str, base: int, device: int, value: int) -> WriteResult:
        if not 0 <= value < 1 << 64:
            raise HamiError(f"{name}: value {value} does not fit in uint64", permanent=False)
        fd = self._open(os.O_RDWR)
        try:
            _, _, head = _validate(fd, self.path)
            (device_num,) = struct.unpack_from("<Q", head, OFF_DEVICE_NUM)
            if not 0 <= device < min(device_num, MAX_DEVICES):
                raise HamiError(f"{self.path}: device {device} out of range "
                                f"(region has {device_num})", permanent=False)
            off = base + 8 * device
            (old,) = struct.unpack("<Q", os.pread(fd, 8, off))
            self.originals.setdefault((name, device), old)
            if old == value:
                return WriteResult(name, device, old, value, changed=False)
            if os.pwrite(fd, struct.pack("<Q", value), off) != 8:
                raise HamiError(f"{self.path}: short write of {name}[{device}]", permanent=False)
            (back,) = struct.unpack("<Q", os.pread(fd, 8, off))
            if back != value:
                raise HamiError(f"{self.path}: {name}[{device}] reads back {back}, wrote {value}",
                                permanent=False)
            return WriteResult(name, device, old, value, changed=True)
        finally:
            os.close(fd)


def k8s_patch_plan(
    *, namespace: str, owner_kind: str, owner_name: str, container: str, container_index: int,
    share_pct: int, memory_bytes: int,
) -> dict[str, Any]:
    """The Kubernetes equivalent for the operator to apply (this daemon never calls the API).

    HAMi reads ``nvidia.com/gpucores`` (percent) and ``nvidia.com/gpumem`` (MiB) at pod
    creation, and extended resources of a running pod are immutable, so the patch targets the
    owning workload's pod template; its rollout restarts the pod with the new share.
    """
    mem_mib = -(-memory_bytes // MIB)
    limits = {"nvidia.com/gpucores": str(share_pct), "nvidia.com/gpumem": str(mem_mib)}
    path = f"/spec/template/spec/containers/{container_index}/resources/limits"
    return {
        "target": {"kind": owner_kind, "namespace": namespace, "name": owner_name},
        "strategic_merge_patch": {
            "spec": {"template": {"spec": {"containers": [
                {"name": container, "resources": {"limits": limits}}]}}}
        },
        "json_patch": [
            {"op": "add", "path": f"{path}/nvidia.com~1gpucores", "value": limits[
                "nvidia.com/gpucores"]},
            {"op": "add", "path": f"{path}/nvidia.com~1gpumem", "value": limits[
                "nvidia.com/gpumem"]},
        ],
        "kubectl": (f"kubectl -n {namespace} patch {owner_kind.lower()} {owner_name} "
                    f"--type=strategic -p '<strategic_merge_patch>'"),
    }
