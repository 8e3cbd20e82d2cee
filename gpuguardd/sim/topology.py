"""Simulated host layouts: built-in presets and a loader for NCCL topology XML.

A :class:`HostSpec` is the static part of a host: the :class:`~gpuguardd.model.topology.Topology`
the controller may see (the real host discovers the same from sysfs), plus what only the
simulator needs: each GPU's model and each block device's read bandwidth.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpuguardd.model.topology import BlockDevice, GpuInfo, NumaNode, PcieSwitch, Topology
from gpuguardd.sim.hardware import gpu_model, pcie_h2d_bps


class TopologyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class HostSpec:
    topology: Topology
    #: GPU index -> GPU model name (hardware.GPU_MODELS)
    gpu_models: dict[int, str]
    #: block device "MAJ:MIN" -> read bandwidth, bytes/s
    disk_read_bps: dict[str, float] = field(default_factory=dict)

    def link_bps(self, gpu: int) -> float:
        g = self.topology.gpu(gpu)
        return pcie_h2d_bps(g.pcie_gen, g.pcie_width)

    def switch_chain(self, gpu: int) -> list[PcieSwitch]:
        """The switches between ``gpu`` and its root complex, nearest first."""
        chain: list[PcieSwitch] = []
        name = self.topology.gpu(gpu).switch
        while name is not None:
            sw = self.topology.switch(name)
            if sw is None:
                break
            chain.append(sw)
            name = sw.parent
        return chain


def _cpus(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi))


def _gpu(index: int, model: str, bus: str, numa: int, switch: str | None, root: str,
         gen: int, width: int = 16) -> GpuInfo:
    m = gpu_model(model)
    return GpuInfo(
        index=index, uuid=f"GPU-sim-{index:04d}-{bus.replace(':', '').replace('.', '')}",
        name=model, pci_bus_id=bus, numa_node=numa, switch=switch, root=root,
        pcie_gen=gen, pcie_width=width, memory_bytes=m.memory_bytes, sm_count=m.sm_count,
    )


def _nvme(n: int, numa: int) -> BlockDevice:
    return BlockDevice(name=f"nvme{n}n1", major=259, minor=n, numa_node=numa)


def p4d(hosts: int = 1) -> HostSpec:
    """AWS p4d.24xlarge: 8 x A100-SXM4-40GB, 4 PCIe Gen3 switches each carrying 2 GPUs and an
    EFA NIC behind one x16 uplink, 2 NUMA nodes of 48 vCPUs, 8 local NVMe SSDs (4 per socket,
    ~2.7 GB/s reads each). ``hosts`` > 1 concatenates copies (for fleet-sized benchmarks)."""
    gpus: list[GpuInfo] = []
    switches: list[PcieSwitch] = []
    numa: list[NumaNode] = []
    disks: list[BlockDevice] = []
    nics: list[str] = []
    for h in range(hosts):
        for node in range(2):
            n = 2 * h + node
            base = 96 * h
            # p4d affinity masks: node 0 = cpus 0-23,48-71; node 1 = 24-47,72-95
            lo = base + 24 * node
            numa.append(NumaNode(n, _cpus(lo, lo + 24) + _cpus(lo + 48, lo + 72)))
        for s in range(4):
            sw = f"h{h}sw{s}" if hosts > 1 else f"sw{s}"
            node = 2 * h + s // 2
            switches.append(PcieSwitch(sw, None, node, 3, 16, pcie_h2d_bps(3, 16)))
            nics.append(f"efa{4 * h + s}")
            for k in range(2):
                i = 8 * h + 2 * s + k
                # bus numbers as in AWS's p4d NCCL topology file (0x10, 0x20, 0x90, 0xa0)
                bus = f"{h:04x}:{(0x10, 0x20, 0x90, 0xA0)[s]:02x}:{0x1C + k:02x}.0"
                gpus.append(_gpu(i, "A100-SXM4-40GB", bus, node, sw, f"root{node}", 3))
        for d in range(8):
            disks.append(_nvme(8 * h + d, 2 * h + d // 4))
    topo = Topology(tuple(gpus), tuple(switches), tuple(numa), tuple(disks), tuple(nics))
    return HostSpec(topo, {g.index: g.name for g in gpus},
                    {d.devno: 2.7e9 for d in disks})


def a100_pcie() -> HostSpec:
    """One A100-80GB PCIe card on a Gen4 x16 root port, one NUMA node, one NVMe SSD."""
    g = _gpu(0, "A100-PCIE-80GB", "0000:17:00.0", 0, None, "root0", 4)
    disk = _nvme(0, 0)
    topo = Topology((g,), (), (NumaNode(0, _cpus(0, 32)),), (disk,), ("eth0",))
    return HostSpec(topo, {0: g.name}, {disk.devno: 3.5e9})


def h100() -> HostSpec:
    """One H100-SXM5-80GB on a Gen5 x16 link, one NUMA node, one Gen4 NVMe SSD."""
    g = _gpu(0, "H100-SXM5-80GB", "0000:18:00.0", 0, None, "root0", 5)
    disk = _nvme(0, 0)
    topo = Topology((g,), (), (NumaNode(0, _cpus(0, 64)),), (disk,), ("eth0",))
    return HostSpec(topo, {0: g.name}, {disk.devno: 7.0e9})


def p4d_x2() -> HostSpec:
    """Two p4d.24xlarge worth of GPUs (16 x A100) as one host: for fleet-sized benchmarks."""
    return p4d(2)


PRESETS: dict[str, Callable[[], HostSpec]] = {
    "p4d": p4d, "a100-pcie": a100_pcie, "h100": h100, "p4d-x2": p4d_x2,
}


def preset(name: str) -> HostSpec:
    try:
        factory = PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise TopologyError(f"unknown host preset {name!r} (known: {known})") from None
    return factory()


# -- NCCL topology XML -------------------------------------------------------------------------

_GT_TO_GEN = {"2.5": 1, "5": 2, "8": 3, "16": 4, "32": 5, "64": 6}


def _gen(link_speed: str | None, where: str) -> int:
    if link_speed is None:
        raise TopologyError(f"{where}: missing link_speed")
    num = link_speed.strip().split()[0] if link_speed.strip() else ""
    try:
        return _GT_TO_GEN[str(float(num)).removesuffix(".0")]
    except (KeyError, ValueError):
        raise TopologyError(f"{where}: unknown link_speed {link_speed!r}") from None


def _width(text: str | None, where: str) -> int:
    try:
        w = int(text or "")
    except ValueError:
        raise TopologyError(f"{where}: link_width {text!r} is not an integer") from None
    if w not in (1, 2, 4, 8, 16, 32):
        raise TopologyError(f"{where}: link_width {w} is not a PCIe width")
    return w


def _affinity(mask: str, where: str) -> tuple[int, ...]:
    """A Linux cpumask string (comma-separated 32-bit hex words, most significant first)."""
    try:
        words = [int(w, 16) for w in mask.strip().split(",")]
    except ValueError:
        raise TopologyError(f"{where}: affinity {mask!r} is not a cpumask") from None
    value = 0
    for w in words:
        value = (value << 32) | w
    return tuple(i for i in range(value.bit_length()) if value >> i & 1)


def load_nccl_xml(path: str | Path, gpu: str, *, nvme_read_bps: float = 2.7e9) -> HostSpec:
    """Read an NCCL topology file (``<system><cpu numaid affinity><pci ...>``).

    PCI class 0x0604 is a bridge (switch), 0x0300/0x0302 a GPU, 0x0200 a NIC, 0x0108 an NVMe
    controller. Switches take their uplink speed from their own link attributes. NCCL files
    usually list no disks; then one NVMe SSD per NUMA node is assumed (stated in its name).
    The file is a local one the operator chose; entity expansion is not a concern for
    ElementTree (it does not fetch external entities), and malformed input is an error here.
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()  # noqa: S314 - see docstring
    except FileNotFoundError:
        raise TopologyError(f"{p}: no such file") from None
    except ET.ParseError as e:
        raise TopologyError(f"{p}: malformed XML: {e}") from None
    except OSError as e:
        raise TopologyError(f"{p}: cannot read: {e}") from None
    try:
        gpu_model(gpu)
    except KeyError as e:
        raise TopologyError(str(e.args[0])) from None
    if root.tag != "system":
        raise TopologyError(f"{p}: root element is <{root.tag}>, expected <system>")
    gpus: list[GpuInfo] = []
    switches: list[PcieSwitch] = []
    numa: list[NumaNode] = []
    disks: list[BlockDevice] = []
    nics: list[str] = []

    def walk(el: ET.Element, node: int, parent: str | None, where: str) -> None:
        for i, child in enumerate(el.findall("pci")):
            cw = f"{where}/pci[{i}]"
            bus = child.get("busid")
            cls = (child.get("class") or "").lower()
            if not bus or not cls.startswith("0x"):
                raise TopologyError(f"{cw}: a <pci> needs busid and class")
            gen = _gen(child.get("link_speed"), cw)
            width = _width(child.get("link_width"), cw)
            if cls.startswith("0x0604"):
                name = f"sw{len(switches)}"
                switches.append(PcieSwitch(name, parent, node, gen, width,
                                           pcie_h2d_bps(gen, width)))
                walk(child, node, name, cw)
            elif cls.startswith(("0x0300", "0x0302")):
                gpus.append(_gpu(len(gpus), gpu, bus, node, parent, f"root{node}", gen, width))
            elif cls.startswith("0x0200"):
                nics.append(f"nic{len(nics)}")
            elif cls.startswith("0x0108"):
                disks.append(_nvme(len(disks), node))

    for i, cpu in enumerate(root.findall("cpu")):
        where = f"{p}: cpu[{i}]"
        try:
            node = int(cpu.get("numaid", ""))
        except ValueError:
            bad = cpu.get("numaid")
            raise TopologyError(f"{where}: numaid {bad!r} is not an integer") from None
        numa.append(NumaNode(node, _affinity(cpu.get("affinity", "0"), where)))
        walk(cpu, node, None, where)
    if not gpus:
        raise TopologyError(f"{p}: no GPU (<pci class=0x0302...>) found")
    if not disks:
        disks = [replace(_nvme(n.node, n.node), name=f"nvme{n.node}n1-assumed") for n in numa]
    topo = Topology(tuple(gpus), tuple(switches), tuple(numa), tuple(disks), tuple(nics))
    return HostSpec(topo, {g.index: gpu for g in gpus}, {d.devno: nvme_read_bps for d in disks})
