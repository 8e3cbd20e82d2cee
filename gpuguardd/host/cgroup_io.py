"""Block-I/O counters and limits of tenant cgroups, on cgroup v2 (``io.*``) or v1 (``blkio.*``).

The version is detected at run time from the cgroup root:

* v2: the root itself is a cgroup2 mount (``cgroup.controllers`` exists). Limits go to
  ``io.max`` (``MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..``, ``max`` lifts one), counters come
  from ``io.stat`` (which already includes descendants).
* v1: ``<root>/blkio`` is the blkio hierarchy. Limits go to the four
  ``blkio.throttle.{read,write}_{bps,iops}_device`` files (``MAJ:MIN value``, ``0`` removes a
  rule); counters come from ``blkio.throttle.io_service_bytes_recursive`` and
  ``io_serviced_recursive`` (the non-recursive files when a kernel lacks those), so a service
  whose processes sit in child cgroups is counted completely.

Every write is read-compare-write-read back (a write the kernel silently ignores is an error,
not a success), the value found before the first write is kept so that :meth:`CgroupIo.restore_all`
puts it back, and nothing is ever written outside the configured cgroup root: tenant paths are
relative, without ``..``, and must not resolve (through symlinks) outside it.

Error kinds (:class:`LeverError`):

* ``ENOENT`` (the tenant's cgroup does not exist - not started yet, or it just exited and
  systemd removed it) is **temporary**: the tenant usually comes back under the same path, and a
  throttle on a cgroup that no longer exists has nothing left to do.
* ``EACCES``/``EPERM``/``EROFS`` (no rights, read-only cgroupfs), ``EINVAL``/``ENODEV`` (the
  kernel rejects the device - e.g. a partition instead of a whole disk, or an unknown MAJ:MIN)
  and a missing limit file (the ``io`` controller is not enabled for that subtree) are
  **permanent** for the target: retrying cannot help until an operator changes something.
* Anything else (``EBUSY``, ``EINTR``, ``EAGAIN``, ...) is temporary.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import IoCounters

_DEVNO = re.compile(r"^\d+:\d+$")
# ELOOP: a symlink where a control file should be (O_NOFOLLOW) - tampering, not a hiccup
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL, errno.ENODEV,
                               errno.ELOOP})
_V1_FILES: tuple[tuple[str, str], ...] = (
    ("rbps", "blkio.throttle.read_bps_device"),
    ("wbps", "blkio.throttle.write_bps_device"),
    ("riops", "blkio.throttle.read_iops_device"),
    ("wiops", "blkio.throttle.write_iops_device"),
)


class CgroupVersion(StrEnum):
    V1 = "v1"
    V2 = "v2"


def detect_version(cgroup_root: Path) -> CgroupVersion | None:
    """v2 if the root is a cgroup2 mount with the io controller available, v1 if a blkio
    hierarchy is mounted below it, else None (no block-I/O control on this host)."""
    controllers = cgroup_root / "cgroup.controllers"
    if controllers.is_file():
        return CgroupVersion.V2
    if (cgroup_root / "blkio" / "blkio.throttle.read_bps_device").is_file():
        return CgroupVersion.V1
    return None


def v2_io_available(cgroup_root: Path) -> bool:
    try:
        return "io" in (cgroup_root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def lever_error(action: str, path: Path, e: OSError) -> LeverError:
    code = e.errno if e.errno is not None else 0
    name = errno.errorcode.get(code, str(code))
    if code == errno.ENOENT:
        return CgroupGone(f"{action} {path}: cgroup gone ({name})")
    return LeverError(f"{action} {path}: {e.strerror or e} ({name})",
                      permanent=code in _PERMANENT_ERRNOS)


class CgroupGone(LeverError):
    """The tenant's cgroup does not exist (temporary: it may come back under the same path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False, retry_after_s=10.0)


@dataclass(frozen=True, slots=True)
class _Saved:
    path: str
    device: str
    limit: IoLimit


class CgroupIo:
    """Reads and limits block I/O of cgroups below one cgroup root."""

    def __init__(self, cgroup_root: Path, version: CgroupVersion | None = None) -> None:
        self.root = cgroup_root
        detected = version if version is not None else detect_version(cgroup_root)
        if detected is None:
            raise LeverError(f"no cgroup v2 io controller or v1 blkio hierarchy at {cgroup_root}",
                             permanent=True)
        self.version = detected
        self.base = cgroup_root / "blkio" if detected is CgroupVersion.V1 else cgroup_root
        self._saved: dict[tuple[str, str], _Saved] = {}

    # -- paths ---------------------------------------------------------------------------------
    def resolve(self, rel: str) -> Path:
        """The cgroup directory of ``rel``; LeverError(permanent) if it could leave the root."""
        parts = rel.split("/")
        if (not rel.strip("/") or rel.startswith("/") or "\0" in rel
                or any(p in ("..", ".") for p in parts)):
            raise LeverError(f"cgroup path {rel!r} must be relative, without '.' or '..'",
                             permanent=True)
        path = self.base.joinpath(*[p for p in parts if p])
        base_real = os.path.realpath(self.base)
        real = os.path.realpath(path)
        # cgroupfs has no symlinks of its own, so once the directory resolves inside the root
        # (and the control file is opened with O_NOFOLLOW) the write cannot leave it.
        if real == base_real or os.path.commonpath([base_real, real]) != base_real:
            raise LeverError(f"cgroup path {rel!r} resolves outside {self.base}", permanent=True)
        return Path(real)

    # -- counters ------------------------------------------------------------------------------
    def stats(self, rel: str) -> tuple[IoCounters, ...]:
        """Cumulative bytes/ops per device of cgroup ``rel`` (descendants included)."""
        cg = self.resolve(rel)
        try:
            if self.version is CgroupVersion.V2:
                return parse_io_stat((cg / "io.stat").read_text())
            nbytes = _read_first(cg, "blkio.throttle.io_service_bytes_recursive",
                                 "blkio.throttle.io_service_bytes")
            nios = _read_first(cg, "blkio.throttle.io_serviced_recursive",
                               "blkio.throttle.io_serviced")
        except OSError as e:
            raise lever_error("read", cg, e) from None
        return merge_v1_stats(parse_blkio_rw(nbytes), parse_blkio_rw(nios))

    # -- limits --------------------------------------------------------------------------------
    def get_limit(self, rel: str, device: str) -> IoLimit:
        _check_devno(device)
        cg = self.resolve(rel)
        try:
            if self.version is CgroupVersion.V2:
                return parse_io_max(self._limit_file(cg, "io.max").read_text()).get(
                    device, IoLimit())
            values: dict[str, int | None] = {}
            for key, name in _V1_FILES:
                rules = parse_v1_rules(self._limit_file(cg, name).read_text())
                values[key] = rules.get(device)
        except OSError as e:
            raise lever_error("read", cg, e) from None
        return IoLimit(**values)

    def set_limit(self, rel: str, device: str, limit: IoLimit) -> bool:
        """Apply ``limit``; returns False when it was already in place (nothing written)."""
        _check_devno(device)
        for v in (limit.rbps, limit.wbps, limit.riops, limit.wiops):
            if v is not None and v <= 0:
                raise LeverError(f"io limit {limit} on {device}: values must be > 0 or max",
                                 permanent=True)
        current = self.get_limit(rel, device)
        if current == limit:
            return False
        self._saved.setdefault((rel, device), _Saved(rel, device, current))
        cg = self.resolve(rel)
        try:
            if self.version is CgroupVersion.V2:
                _write(self._limit_file(cg, "io.max"), f"{device} {_v2_line(limit)}\n")
            else:
                for key, name in _V1_FILES:
                    want = getattr(limit, key)
                    if getattr(current, key) != want:
                        _write(self._limit_file(cg, name), f"{device} {want or 0}\n")
        except OSError as e:
            raise lever_error("write", cg, e) from None
        after = self.get_limit(rel, device)
        if after != limit:
            raise LeverError(f"io limit on {cg} {device}: wrote {limit}, kernel shows {after}",
                             permanent=True)
        if limit.unlimited:
            # A lift is never undone: what we "found" may be the throttle of a daemon that was
            # killed (the journal restores it after a restart), and restore_all on exit would
            # put that throttle back for good.
            self._saved.pop((rel, device), None)
        return True

    def original(self, rel: str, device: str) -> IoLimit | None:
        saved = self._saved.get((rel, device))
        return saved.limit if saved is not None else None

    def restore(self, rel: str, device: str) -> None:
        saved = self._saved.get((rel, device))
        if saved is None:
            return
        self.set_limit(rel, device, saved.limit)
        self._saved.pop((rel, device), None)  # set_limit already forgets a lift

    def restore_all(self) -> list[str]:
        """Put back every value found before our first write; returns the failures."""
        failures: list[str] = []
        for rel, device in list(self._saved):
            try:
                self.restore(rel, device)
            except CgroupGone:
                self._saved.pop((rel, device), None)  # the cgroup left: nothing to undo
            except LeverError as e:
                failures.append(str(e))
        return failures

    def _limit_file(self, cg: Path, name: str) -> Path:
        f = cg / name
        if not f.exists() and cg.is_dir():
            what = ("the io controller is not enabled for this subtree (add 'io' to the "
                    "parent's cgroup.subtree_control)"
                    if self.version is CgroupVersion.V2 else "blk-throttle is not available")
            raise LeverError(f"{f} missing: {what}", permanent=True)
        return f


# -- parsers (pure) ------------------------------------------------------------------------------
def _check_devno(device: str) -> None:
    if not _DEVNO.match(device):
        raise LeverError(f"device {device!r} is not MAJ:MIN", permanent=True)


def _write(path: Path, text: str) -> None:
    # O_NOFOLLOW + no O_CREAT: only ever write an existing control file, never create one.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_first(cg: Path, *names: str) -> str:
    for name in names[:-1]:
        try:
            return (cg / name).read_text()
        except FileNotFoundError:
            continue
    return (cg / names[-1]).read_text()


def _v2_line(limit: IoLimit) -> str:
    return " ".join(f"{k}={'max' if v is None else v}" for k, v in (
        ("rbps", limit.rbps), ("wbps", limit.wbps), ("riops", limit.riops),
        ("wiops", limit.wiops)))


def _num(text: str) -> int | None:
    if text == "max":
        return None
    try:
        n = int(text)
    except ValueError:
        return None
    return n if n > 0 else None


def parse_io_max(text: str) -> dict[str, IoLimit]:
    out: dict[str, IoLimit] = {}
    for line in text.splitlines():
        dev, *pairs = line.split()
        if not _DEVNO.match(dev):
            continue
        kv = dict(p.split("=", 1) for p in pairs if "=" in p)
        out[dev] = IoLimit(rbps=_num(kv.get("rbps", "max")), wbps=_num(kv.get("wbps", "max")),
                           riops=_num(kv.get("riops", "max")),
                           wiops=_num(kv.get("wiops", "max")))
    return out


def parse_io_stat(text: str) -> tuple[IoCounters, ...]:
    out: list[IoCounters] = []
    for line in text.splitlines():
        dev, *pairs = line.split()
        if not _DEVNO.match(dev):
            continue
        kv: dict[str, int] = {}
        for p in pairs:
            k, _, v = p.partition("=")
            if v.isdigit():
                kv[k] = int(v)
        out.append(IoCounters(dev, rbytes=kv.get("rbytes", 0), wbytes=kv.get("wbytes", 0),
                              rios=kv.get("rios", 0), wios=kv.get("wios", 0)))
    return tuple(out)


def parse_v1_rules(text: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and _DEVNO.match(parts[0]) and parts[1].isdigit():
            out[parts[0]] = _num(parts[1])
    return out


def parse_blkio_rw(text: str) -> dict[str, tuple[int, int]]:
    """``MAJ:MIN Read N`` / ``MAJ:MIN Write N`` lines -> device -> (read, write)."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not _DEVNO.match(parts[0]) or not parts[2].isdigit():
            continue
        r, w = out.get(parts[0], (0, 0))
        if parts[1] == "Read":
            r = int(parts[2])
        elif parts[1] == "Write":
            w = int(parts[2])
        else:
            continue
        out[parts[0]] = (r, w)
    return out


def merge_v1_stats(nbytes: dict[str, tuple[int, int]],
                   nios: dict[str, tuple[int, int]]) -> tuple[IoCounters, ...]:
    out = []
    for dev in sorted(set(nbytes) | set(nios)):
        rb, wb = nbytes.get(dev, (0, 0))
        ri, wi = nios.get(dev, (0, 0))
        out.append(IoCounters(dev, rbytes=rb, wbytes=wb, rios=ri, wios=wi))
    return tuple(out)


def parse_diskstats(text: str, *, whole_disks: frozenset[str] | None = None) -> dict[str, int]:
    """``/proc/diskstats`` -> devno -> cumulative bytes read + written (sectors are 512 B).

    ``whole_disks`` (devnos) restricts the result, so partitions are not double-counted.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or not (f[0].isdigit() and f[1].isdigit()):
            continue
        dev = f"{f[0]}:{f[1]}"
        if whole_disks is not None and dev not in whole_disks:
            continue
        try:
            out[dev] = (int(f[5]) + int(f[9])) * 512
        except ValueError:
            continue
    return out


def whole_disk_of(devno: str, sys_dev_block: Path) -> str | None:
    """The whole-disk devno for ``devno`` (itself, or the parent of a partition); None when
    the number is not a block device in sysfs (tmpfs, overlay, NFS: major 0)."""
    node = sys_dev_block / devno
    if not node.exists():
        return None
    if (node / "partition").exists():
        try:
            return (node.resolve().parent / "dev").read_text().strip()
        except OSError:
            return None
    return devno


def block_device_of(path: str | os.PathLike[str], sys_dev_block: Path) -> str | None:
    """The whole disk (``MAJ:MIN``) holding the file system of ``path``, if it is a real one."""
    st = os.stat(path)
    return whole_disk_of(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", sys_dev_block)
