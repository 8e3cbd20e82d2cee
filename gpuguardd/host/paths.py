"""Every host path the real backend reads or writes, derived from injected roots.

Tests build tiny fake ``/sys``, ``/proc`` and cgroupfs trees in a temp dir and pass its path;
production passes ``/`` and ``/sys/fs/cgroup``. Nothing in ``gpuguardd.host`` spells an absolute
host path except through this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HostPaths:
    """``root`` holds ``sys``, ``proc`` and ``dev``; ``cgroup_root`` is the cgroup mount point
    (default ``<root>/sys/fs/cgroup``)."""

    root: Path = Path("/")
    cgroup_root: Path | None = None

    @staticmethod
    def of(fs_root: str | Path, cgroup_root: str | Path | None = None) -> HostPaths:
        return HostPaths(Path(fs_root), Path(cgroup_root) if cgroup_root is not None else None)

    # -- sysfs ---------------------------------------------------------------------------------
    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def pci_devices(self) -> Path:
        return self.sys / "bus" / "pci" / "devices"

    def pci_device(self, bus_id: str) -> Path:
        return self.pci_devices / bus_id

    @property
    def sys_block(self) -> Path:
        return self.sys / "class" / "block"

    @property
    def sys_dev_block(self) -> Path:
        return self.sys / "dev" / "block"

    @property
    def sys_net(self) -> Path:
        return self.sys / "class" / "net"

    @property
    def numa_nodes(self) -> Path:
        return self.sys / "devices" / "system" / "node"

    @property
    def sys_devices(self) -> Path:
        return self.sys / "devices"

    # -- procfs --------------------------------------------------------------------------------
    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def interrupts(self) -> Path:
        return self.proc / "interrupts"

    @property
    def diskstats(self) -> Path:
        return self.proc / "diskstats"

    @property
    def mounts(self) -> Path:
        return self.proc / "self" / "mounts"

    def proc_cgroup(self, pid: int) -> Path:
        return self.proc / str(pid) / "cgroup"

    # -- cgroupfs ------------------------------------------------------------------------------
    @property
    def cgroup(self) -> Path:
        return self.cgroup_root if self.cgroup_root is not None else self.sys / "fs" / "cgroup"

    # -- devices -------------------------------------------------------------------------------
    @property
    def dev(self) -> Path:
        return self.root / "dev"
