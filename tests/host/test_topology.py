"""Topology from a fake p4d-like sysfs tree and from this machine's real /sys."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpuguardd.host.paths import HostPaths
from gpuguardd.host.topology import (
    DeviceMonitor,
    SysfsTopology,
    link_bps,
    parse_cpulist,
    parse_interrupts,
)
from tests.host.fake_sysfs import p4d_like


@pytest.fixture
def topo(tmp_path: Path) -> SysfsTopology:
    p4d_like(tmp_path)
    return SysfsTopology(HostPaths(tmp_path))


def test_gpu_placement_through_switches(topo: SysfsTopology) -> None:
    gpus = topo.nvidia_pci_devices()
    assert len(gpus) == 8
    a, b, c = (topo.placement(g) for g in gpus[:3])
    assert a is not None and b is not None and c is not None
    assert a.root == "0000:10:01.0" and a.switches == ("0000:11:00.0",)
    assert a.switch == b.switch and a.switch != c.switch  # two GPUs per switch
    assert a.numa_node == 0 and a.local_cpus[:2] == (0, 1) and len(a.local_cpus) == 48
    last = topo.placement(gpus[-1])
    assert last is not None and last.numa_node == 1 and last.root.startswith("0000:b0")


def test_switches_have_uplink_capacity_and_parents(topo: SysfsTopology) -> None:
    places = [p for g in topo.nvidia_pci_devices() if (p := topo.placement(g))]
    sws = {s.name: s for s in topo.switches_for(places)}
    assert len(sws) == 8  # four root ports + four switches
    sw = sws["0000:11:00.0"]
    assert sw.parent == "0000:10:01.0" and sws["0000:10:01.0"].parent is None
    assert (sw.gen, sw.width) == (3, 16)
    assert sw.uplink_bps == pytest.approx(15.75e9, rel=0.01)  # Gen3 x16 ~ 15.75 GB/s raw


def test_block_devices_whole_disks_only_with_placement(topo: SysfsTopology) -> None:
    devs = {d.name: (d, p) for d, p in topo.block_devices()}
    assert set(devs) == {"nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1", "sda"}
    nvme, nvme_place = devs["nvme0n1"]
    assert nvme.devno == "259:0" and nvme.switch == "0000:11:00.0" and nvme.numa_node == 0
    assert nvme_place is not None and nvme_place.root == "0000:10:01.0"
    assert devs["nvme3n1"][0].numa_node == 1
    sda, sp = devs["sda"]
    assert sda.devno == "8:0" and sda.switch is None
    assert sp is not None and sp.root == "pci0000:00"


def test_nics(topo: SysfsTopology) -> None:
    nics = {n.name: n for n in topo.nics()}
    assert set(nics) == {"eth0", "eth1", "eth2", "eth3"}
    p = nics["eth0"].placement
    assert p is not None and p.switch == "0000:11:00.0"


def test_numa_nodes(topo: SysfsTopology) -> None:
    nodes = topo.numa_nodes()
    assert [n.node for n in nodes] == [0, 1]
    assert len(nodes[1].cpus) == 48 and nodes[1].cpus[0] == 24


def test_cpulist_and_link_math() -> None:
    assert parse_cpulist("0-2,5,7-8\n") == (0, 1, 2, 5, 7, 8)
    assert parse_cpulist("") == ()
    assert parse_cpulist("x,3") == (3,)
    assert link_bps(4, 16) == pytest.approx(31.5e9, rel=0.01)
    assert link_bps(0, 16) == 0.0


def test_parse_interrupts_counts_device_irqs_per_cpu() -> None:
    text = (
        "           CPU0       CPU1       \n"
        " 24:          1          0  IO-APIC   5-edge      ACPI:Ged\n"
        " 36:          0      36098 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n"
        "NMI:          9          9   Non-maskable interrupts\n"
        "LOC:     100000     200000   Local timer interrupts\n"
        "ERR:          0\n"
    )
    assert parse_interrupts(text) == {0: 1, 1: 36098}
    assert parse_interrupts("") == {}
    assert parse_interrupts("garbage\n12: x y\n") == {}


def test_this_machine_real_sysfs() -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("no PCI sysfs on this machine")
    topo = SysfsTopology(HostPaths(Path("/")))
    nodes = topo.numa_nodes()
    assert nodes and all(n.cpus for n in nodes)
    assert sum(len(n.cpus) for n in nodes) == os.cpu_count()
    for dev, place in topo.block_devices():
        # every reported disk is a whole disk with a MAJ:MIN that sysfs knows
        assert Path(f"/sys/dev/block/{dev.devno}").exists()
        assert not Path(f"/sys/dev/block/{dev.devno}/partition").exists()
        if place is not None:
            assert topo.placement(place.bus_id) == place
    irqs = parse_interrupts(Path("/proc/interrupts").read_text())
    assert set(irqs) == set(range(os.cpu_count() or 0))


def test_udev_monitor_sees_block_add(tmp_path: Path) -> None:
    uevent = Path("/sys/class/block/loop0/uevent")
    if os.geteuid() != 0 or not uevent.exists():
        pytest.skip("needs root and /sys/class/block/loop0 to synthesise a uevent")
    mon = DeviceMonitor()
    try:
        mon.changed()  # drain anything pending
        uevent.write_text("add\n")  # a synthetic uevent; the loop device itself is untouched
        deadline = time.monotonic() + 2.0
        seen: list[str] = []
        while time.monotonic() < deadline and not seen:
            seen = mon.changed()
            time.sleep(0.02)
        assert "add block loop0" in seen
    finally:
        mon.close()
