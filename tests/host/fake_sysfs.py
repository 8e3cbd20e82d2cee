"""Tiny fake ``/sys`` and ``/proc`` trees, laid out like the kernel's (relative symlinks)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FakeSys:
    root: Path
    nodes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "sys" / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)
        (self.root / "sys" / "class" / "block").mkdir(parents=True, exist_ok=True)
        (self.root / "sys" / "class" / "net").mkdir(parents=True, exist_ok=True)
        (self.root / "sys" / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (self.root / "proc").mkdir(exist_ok=True)

    def numa(self, node: int, cpulist: str) -> None:
        d = self.root / "sys" / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpulist").write_text(cpulist + "\n")

    def pci(self, chain: list[str], *, vendor: str = "0x8086", cls: str = "0x060400",
            numa: int = -1, cpulist: str = "0-3", speed: str = "16.0 GT/s PCIe",
            width: int = 16, host: str = "pci0000:00") -> Path:
        """Create every device of ``chain`` (root port first) under ``host``; returns the last."""
        d = self.root / "sys" / "devices" / host
        for i, bdf in enumerate(chain):
            d = d / bdf
            d.mkdir(parents=True, exist_ok=True)
            last = i == len(chain) - 1
            for name, value in (("vendor", vendor if last else "0x8086"),
                                ("class", cls if last else "0x060400"),
                                ("numa_node", str(numa)), ("local_cpulist", cpulist),
                                ("current_link_speed", speed),
                                ("current_link_width", str(width))):
                if not (d / name).exists() or last:
                    (d / name).write_text(value + "\n")
            link = self.root / "sys" / "bus" / "pci" / "devices" / bdf
            if not link.is_symlink():
                os.symlink(os.path.relpath(d, link.parent), link)
        return d

    def block(self, parent: Path, name: str, devno: str, partitions: int = 0) -> None:
        d = parent / "block" / name
        d.mkdir(parents=True)
        (d / "dev").write_text(devno + "\n")
        self._class_link("block", name, d)
        self._devno_link(devno, d)
        major, minor = devno.split(":")
        for p in range(1, partitions + 1):
            pd = d / f"{name}p{p}"
            pd.mkdir()
            (pd / "partition").write_text(f"{p}\n")
            (pd / "dev").write_text(f"{major}:{int(minor) + p}\n")
            self._class_link("block", pd.name, pd)
            self._devno_link(f"{major}:{int(minor) + p}", pd)

    def virtual_block(self, name: str, devno: str) -> None:
        d = self.root / "sys" / "devices" / "virtual" / "block" / name
        d.mkdir(parents=True)
        (d / "dev").write_text(devno + "\n")
        self._class_link("block", name, d)

    def net(self, parent: Path, name: str) -> None:
        d = parent / "net" / name
        d.mkdir(parents=True)
        self._class_link("net", name, d)

    def _class_link(self, cls: str, name: str, target: Path) -> None:
        link = self.root / "sys" / "class" / cls / name
        os.symlink(os.path.relpath(target, link.parent), link)

    def _devno_link(self, devno: str, target: Path) -> None:
        link = self.root / "sys" / "dev" / "block" / devno
        os.symlink(os.path.relpath(target, link.parent), link)


def p4d_like(root: Path) -> FakeSys:
    """Two NUMA nodes; per node two PCIe switches (Gen3 x16 uplink), each with two NVIDIA GPUs,
    one NIC and one NVMe disk; one GPU-less root port with a SATA disk."""
    fs = FakeSys(root)
    fs.numa(0, "0-23,48-71")
    fs.numa(1, "24-47,72-95")
    n = 0
    for node, host in ((0, "pci0000:10"), (1, "pci0000:90")):
        for sw in range(2):
            bus = 0x10 + node * 0x80 + sw * 0x20
            rp = f"0000:{bus:02x}:01.0"
            usp = f"0000:{bus + 1:02x}:00.0"
            cpus = "0-23,48-71" if node == 0 else "24-47,72-95"
            fs.pci([rp, usp], numa=node, cpulist=cpus, speed="8.0 GT/s PCIe", host=host)
            for slot in range(4):
                dsp = f"0000:{bus + 2:02x}:{slot:02x}.0"
                ep = f"0000:{bus + 3 + slot:02x}:00.0"
                kind = ("gpu", "gpu", "nic", "nvme")[slot]
                cls = {"gpu": "0x030200", "nic": "0x020000", "nvme": "0x010802"}[kind]
                vendor = {"gpu": "0x10de", "nic": "0x1d0f", "nvme": "0x1d0f"}[kind]
                d = fs.pci([rp, usp, dsp, ep], vendor=vendor, cls=cls, numa=node, cpulist=cpus,
                           host=host)
                if kind == "nic":
                    fs.net(d, f"eth{n}")
                elif kind == "nvme":
                    fs.block(d / "nvme" / f"nvme{n}", f"nvme{n}n1", f"259:{n * 4}", partitions=1)
                    n += 1
    sata = fs.pci(["0000:00:17.0"], cls="0x010601", numa=0, host="pci0000:00")
    fs.block(sata / "ata1" / "host0" / "target0:0:0" / "0:0:0:0", "sda", "8:0", partitions=2)
    fs.virtual_block("loop0", "7:0")
    fs.virtual_block("zram0", "253:0")
    return fs
