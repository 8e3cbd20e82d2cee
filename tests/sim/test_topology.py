"""Host layouts: presets and the NCCL topology XML loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuguardd.sim.topology import TopologyError, a100_pcie, h100, load_nccl_xml, p4d, preset

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
P4D_XML = SHARED / "topology" / "p4d-24xl-topo.xml"

SMALL_XML = """<system version="1">
  <cpu numaid="0" affinity="0000000f" arch="x86_64">
    <pci busid="ffff:ff:01.0" class="0x060400" link_speed="16 GT/s" link_width="16">
      <pci busid="0000:10:00.0" class="0x030200" link_speed="16 GT/s" link_width="16"/>
      <pci busid="0000:11:00.0" class="0x010802" link_speed="8 GT/s" link_width="4"/>
    </pci>
  </cpu>
  <cpu numaid="1" affinity="000000f0">
    <pci busid="0000:90:00.0" class="0x030200" link_speed="32 GT/s" link_width="16"/>
  </cpu>
</system>
"""


def test_p4d_preset_shape() -> None:
    spec = p4d()
    topo = spec.topology
    assert len(topo.gpus) == 8 and len(topo.switches) == 4 and len(topo.numa_nodes) == 2
    assert len(topo.nics) == 4 and len(topo.block_devices) == 8
    for s in topo.switches:
        assert len([g for g in topo.gpus if g.switch == s.name]) == 2
        assert s.uplink_bps == 12.5e9 and (s.gen, s.width) == (3, 16)
    assert topo.share_switch(0, 1) and not topo.share_switch(1, 2)
    assert topo.share_numa(0, 3) and not topo.share_numa(3, 4)
    assert {g.name for g in topo.gpus} == {"A100-SXM4-40GB"}
    assert spec.link_bps(0) == 12.5e9
    assert [s.name for s in spec.switch_chain(5)] == ["sw2"]
    assert len(topo.numa_nodes[0].cpus) == 48


def test_single_gpu_presets() -> None:
    a = a100_pcie()
    assert a.topology.gpus[0].pcie_gen == 4 and a.link_bps(0) == 25e9
    assert a.switch_chain(0) == []
    h = h100()
    assert h.link_bps(0) == 50e9 and h.gpu_models[0] == "H100-SXM5-80GB"
    assert len(preset("p4d-x2").topology.gpus) == 16
    with pytest.raises(TopologyError, match="unknown host preset"):
        preset("dgx")


def test_nccl_xml_small_fixture(tmp_path: Path) -> None:
    f = tmp_path / "topo.xml"
    f.write_text(SMALL_XML)
    spec = load_nccl_xml(f, "H100-SXM5-80GB")
    topo = spec.topology
    assert [g.pci_bus_id for g in topo.gpus] == ["0000:10:00.0", "0000:90:00.0"]
    assert topo.gpus[0].switch == "sw0" and topo.gpus[1].switch is None
    assert topo.gpus[1].pcie_gen == 5 and topo.gpus[0].pcie_gen == 4
    assert topo.switches[0].uplink_bps == 25e9
    assert [d.numa_node for d in topo.block_devices] == [0]
    assert topo.numa_nodes[0].cpus == (0, 1, 2, 3) and topo.numa_nodes[1].cpus == (4, 5, 6, 7)


@pytest.mark.parametrize(("text", "match"), [
    ("<system><cpu numaid='0'", "malformed XML"),
    ("<topology/>", "expected <system>"),
    ("<system><cpu numaid='x' affinity='1'/></system>", "numaid"),
    ("<system><cpu numaid='0' affinity='1'><pci busid='0000:01:00.0' class='0x030200' "
     "link_speed='9 GT/s' link_width='16'/></cpu></system>", "link_speed"),
    ("<system><cpu numaid='0' affinity='1'><pci busid='0000:01:00.0' class='0x030200' "
     "link_speed='8 GT/s' link_width='3'/></cpu></system>", "link_width"),
    ("<system><cpu numaid='0' affinity='zz'/></system>", "cpumask"),
    ("<system><cpu numaid='0' affinity='1'/></system>", "no GPU"),
])
def test_nccl_xml_errors_are_clear(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.xml"
    f.write_text(text)
    with pytest.raises(TopologyError, match=match):
        load_nccl_xml(f, "A100-SXM4-40GB")


def test_nccl_xml_missing_file_and_unknown_gpu(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such file"):
        load_nccl_xml(tmp_path / "nope.xml", "A100-SXM4-40GB")
    f = tmp_path / "t.xml"
    f.write_text(SMALL_XML)
    with pytest.raises(TopologyError, match="unknown GPU model"):
        load_nccl_xml(f, "V100")


@pytest.mark.skipif(not P4D_XML.is_file(), reason=f"shared data absent: {P4D_XML}")
def test_real_p4d_file_matches_the_preset() -> None:
    spec = load_nccl_xml(P4D_XML, "A100-SXM4-40GB")
    ref = p4d().topology
    topo = spec.topology
    assert [g.pci_bus_id for g in topo.gpus] == [g.pci_bus_id for g in ref.gpus]
    assert [g.switch for g in topo.gpus] == [g.switch for g in ref.gpus]
    assert [g.numa_node for g in topo.gpus] == [g.numa_node for g in ref.gpus]
    assert [(s.gen, s.width, s.uplink_bps) for s in topo.switches] == [
        (s.gen, s.width, s.uplink_bps) for s in ref.switches]
    assert [n.cpus for n in topo.numa_nodes] == [n.cpus for n in ref.numa_nodes]
    assert len(topo.nics) == 4
