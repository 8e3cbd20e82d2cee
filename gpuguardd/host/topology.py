"""Host topology from sysfs: PCIe paths up to the root port, switches, NUMA, disks, NICs, IRQs.

Every device's place in the PCIe tree comes from its resolved sysfs path, e.g.

    /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:08.0/0000:05:00.0
                 host bridge  root port   switch USP   switch DSP   endpoint (GPU)

The first PCI component is the root port; the bridges between it and the endpoint come in
(upstream, downstream) port pairs, one pair per PCIe switch, and a switch is named after its
upstream port. Devices directly on the host bridge (integrated endpoints, typical in VMs) have
the host bridge (``pci0000:00``) as their root and no switch.

Enumeration walks sysfs below the injected :class:`HostPaths` root (libudev, and so pyudev's
enumeration, always reads the real ``/sys``, which would make fake trees impossible); pyudev is
used for what only it can do - the netlink monitor (:class:`DeviceMonitor`) that tells the host
to rebuild the topology when a PCI or block device comes or goes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuguardd.host.paths import HostPaths
from gpuguardd.model.topology import BlockDevice, GpuInfo, MigInstance, NumaNode, PcieSwitch

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_HOST_BRIDGE = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")
_SKIP_BLOCK = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd")
#: usable bytes/s per lane after encoding (128b/130b from gen 3 on), by PCIe generation
_LANE_BPS = {1: 250e6, 2: 500e6, 3: 984.6e6, 4: 1969.2e6, 5: 3938.5e6, 6: 7877e6}
_GTS_TO_GEN = {"2.5": 1, "5.0": 2, "5": 2, "8.0": 3, "8": 3, "16.0": 4, "16": 4, "32.0": 5,
               "32": 5, "64.0": 6, "64": 6}


@dataclass(frozen=True, slots=True)
class PciPlacement:
    """Where one PCI endpoint sits: its root, the switch it hangs off (nearest), its NUMA node."""

    bus_id: str
    root: str
    switches: tuple[str, ...]  # upstream ports, nearest the root first
    numa_node: int
    local_cpus: tuple[int, ...]

    @property
    def switch(self) -> str | None:
        return self.switches[-1] if self.switches else None


@dataclass(frozen=True, slots=True)
class Nic:
    name: str
    placement: PciPlacement | None


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return default


def parse_cpulist(text: str) -> tuple[int, ...]:
    """``0-3,8,10-11`` -> (0, 1, 2, 3, 8, 10, 11); garbage parts are skipped."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            continue
        out.extend(range(a, b + 1))
    return tuple(sorted(set(out)))


def link_gen(speed: str) -> int:
    """``16.0 GT/s PCIe`` -> 4; 0 when unknown."""
    return _GTS_TO_GEN.get(speed.split(" ")[0], 0)


def link_bps(gen: int, width: int) -> float:
    return _LANE_BPS.get(gen, 0.0) * width


class SysfsTopology:
    """Reads the PCI/NUMA/block/NIC layout below ``paths.root``."""

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    # -- PCI -----------------------------------------------------------------------------------
    def _device_dir(self, bus_id: str) -> Path | None:
        link = self.paths.pci_device(bus_id)
        if not link.exists():
            return None
        return Path(os.path.realpath(link))

    @staticmethod
    def _chain(real: Path) -> tuple[str | None, list[tuple[str, Path]]]:
        """(host bridge name, [(bus id, dir)] from the root down to ``real``)."""
        host: str | None = None
        chain: list[tuple[str, Path]] = []
        cur = Path("/")
        for part in real.parts[1:]:
            cur = cur / part
            if _HOST_BRIDGE.match(part):
                host, chain = part, []
            elif _BDF.match(part):
                chain.append((part, cur))
        return host, chain

    def placement_of_dir(self, real: Path) -> PciPlacement | None:
        """Placement of the PCI device at (or nearest above) sysfs directory ``real``."""
        host, chain = self._chain(real)
        if not chain:
            return None
        endpoint_id, endpoint = chain[-1]
        above = chain[:-1]
        root = above[0][0] if above else (host or endpoint_id)
        bridges = [b for b, _ in above[1:]]
        switches = tuple(bridges[0::2])  # (upstream, downstream) pairs: keep the upstream port
        return PciPlacement(endpoint_id, root, switches, self._numa(endpoint),
                            parse_cpulist(_read(endpoint / "local_cpulist")))

    def placement(self, bus_id: str) -> PciPlacement | None:
        d = self._device_dir(bus_id.lower())
        return self.placement_of_dir(d) if d is not None else None

    def _numa(self, dev: Path) -> int:
        try:
            node = int(_read(dev / "numa_node", "-1"))
        except ValueError:
            node = -1
        if node < 0:
            nodes = self.numa_nodes()
            if len(nodes) == 1:  # no NUMA information, one node: it is that one
                return nodes[0].node
        return node

    def switch_info(self, upstream: str, parent: str | None) -> PcieSwitch | None:
        d = self._device_dir(upstream)
        if d is None:
            return None
        gen = link_gen(_read(d / "current_link_speed"))
        try:
            width = int(_read(d / "current_link_width", "0"))
        except ValueError:
            width = 0
        return PcieSwitch(name=upstream, parent=parent, numa_node=self._numa(d), gen=gen,
                          width=width, uplink_bps=link_bps(gen, width))

    def switches_for(self, placements: Iterable[PciPlacement]) -> tuple[PcieSwitch, ...]:
        """Every root port and switch above ``placements``, parents before children."""
        seen: dict[str, PcieSwitch] = {}
        for p in placements:
            chain = [p.root, *p.switches]
            for i, name in enumerate(chain):
                if name in seen or _HOST_BRIDGE.match(name):
                    continue
                sw = self.switch_info(name, chain[i - 1] if i else None)
                if sw is not None:
                    if sw.parent is not None and _HOST_BRIDGE.match(sw.parent):
                        sw = PcieSwitch(sw.name, None, sw.numa_node, sw.gen, sw.width,
                                        sw.uplink_bps)
                    seen[name] = sw
        return tuple(seen.values())

    def nvidia_pci_devices(self) -> tuple[str, ...]:
        """Bus ids of NVIDIA display/3D controllers (vendor 0x10de, class 0x03xxxx)."""
        out = []
        if not self.paths.pci_devices.is_dir():
            return ()
        for d in sorted(self.paths.pci_devices.iterdir()):
            if (_read(d / "vendor") == "0x10de" and _read(d / "class").startswith("0x03")):
                out.append(d.name)
        return tuple(out)

    # -- NUMA ----------------------------------------------------------------------------------
    def numa_nodes(self) -> tuple[NumaNode, ...]:
        base = self.paths.numa_nodes
        nodes = []
        if base.is_dir():
            for d in base.iterdir():
                m = re.fullmatch(r"node(\d+)", d.name)
                if m:
                    nodes.append(NumaNode(int(m.group(1)), parse_cpulist(_read(d / "cpulist"))))
        if not nodes:
            cpus = parse_cpulist(_read(self.paths.sys / "devices" / "system" / "cpu" / "online"))
            nodes.append(NumaNode(0, cpus))
        return tuple(sorted(nodes, key=lambda n: n.node))

    # -- block devices and NICs ----------------------------------------------------------------
    def block_devices(self) -> tuple[tuple[BlockDevice, PciPlacement | None], ...]:
        """Whole disks (no partitions, no loop/ram/dm devices) with their PCI placement."""
        base = self.paths.sys_block
        out: list[tuple[BlockDevice, PciPlacement | None]] = []
        if not base.is_dir():
            return ()
        for d in sorted(base.iterdir()):
            if d.name.startswith(_SKIP_BLOCK) or (d / "partition").exists():
                continue
            real = Path(os.path.realpath(d))
            if "virtual" in real.parts:
                continue
            majmin = _read(d / "dev")
            if not re.fullmatch(r"\d+:\d+", majmin):
                continue
            major, minor = (int(x) for x in majmin.split(":"))
            place = self.placement_of_dir(real)
            out.append((BlockDevice(d.name, major, minor,
                                    numa_node=place.numa_node if place else -1,
                                    switch=place.switch if place else None), place))
        return tuple(out)

    def nics(self) -> tuple[Nic, ...]:
        base = self.paths.sys_net
        if not base.is_dir():
            return ()
        out = []
        for d in sorted(base.iterdir()):
            real = Path(os.path.realpath(d))
            if "virtual" in real.parts:
                continue
            out.append(Nic(d.name, self.placement_of_dir(real)))
        return tuple(out)


def gpu_info(static: Any, placement: PciPlacement | None,
             instances: Sequence[MigInstance] = ()) -> GpuInfo:
    """A :class:`GpuInfo` from an NVML :class:`~gpuguardd.host.nvml.GpuStatic` and its place."""

    def num(v: object) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    return GpuInfo(
        index=static.index, uuid=static.uuid, name=static.name, pci_bus_id=static.pci_bus_id,
        numa_node=placement.numa_node if placement else -1,
        switch=placement.switch if placement else None,
        root=placement.root if placement else "",
        pcie_gen=num(static.pcie_gen), pcie_width=num(static.pcie_width),
        memory_bytes=static.memory_bytes, sm_count=static.sm_count,
        mig_enabled=static.mig_enabled, instances=tuple(instances),
    )


# -- interrupts --------------------------------------------------------------------------------
def parse_interrupts(text: str) -> dict[int, int]:
    """Cumulative device interrupts per CPU from ``/proc/interrupts``.

    Only numbered (device) IRQ lines count: the per-CPU timer, IPIs and the like (LOC, RES,
    CAL, TLB...) are steady background that would hide a device's IRQ burst.
    """
    lines = text.splitlines()
    if not lines:
        return {}
    cpus = [int(c[3:]) for c in lines[0].split() if c.startswith("CPU") and c[3:].isdigit()]
    totals = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        label, sep, rest = line.partition(":")
        if not sep or not label.strip().isdigit():
            continue
        fields = rest.split()
        for cpu, f in zip(cpus, fields, strict=False):
            if not f.isdigit():
                break
            totals[cpu] += int(f)
    return totals


class DeviceMonitor:
    """Kernel uevents for PCI and block devices, polled without blocking once per tick."""

    def __init__(self) -> None:
        import pyudev

        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source="kernel")
        self._monitor.filter_by("pci")
        self._monitor.filter_by("block")
        self._monitor.start()

    def changed(self) -> list[str]:
        """``action subsystem sys_name`` of every add/remove since the last call."""
        out: list[str] = []
        while True:
            dev = self._monitor.poll(timeout=0)
            if dev is None:
                return out
            # kernel-source monitors do not filter in libudev, so check here as well
            if dev.action in ("add", "remove") and dev.subsystem in ("pci", "block"):
                out.append(f"{dev.action} {dev.subsystem} {dev.sys_name}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._monitor.stop()
