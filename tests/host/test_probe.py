"""``gpuguardd probe``: on this machine (no GPU) and on a fake p4d-like host with MIG."""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest

from gpuguardd.cli import main
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.probe import probe, render
from tests.host.fake_nvml import FakeNvmlLib, a100
from tests.host.fake_sysfs import p4d_like


def test_probe_json_on_this_machine(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    assert main(["probe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    if info["nvml"]["available"]:
        pytest.skip("this machine has NVML")
    assert info["gpus"] == [] and info["nvml"]["error"]
    assert info["numa_nodes"] and info["levers"]["mig"]["usable"] is False
    assert info["cgroup"]["version"] in ("v1", "v2", None)
    assert main(["probe"]) == 0
    text = capsys.readouterr().out
    assert "GPUs: none - no NVIDIA GPU usable through NVML" in text and "Levers:" in text


def test_probe_fake_host_with_mig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p4d_like(tmp_path)
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "cgroup.controllers").write_text("cpu io memory\n")
    (cg / "cgroup.subtree_control").write_text("cpu memory\n")
    g = a100()
    g.bus_id = "00000000:13:00.0"
    g.add_gi("1g.10gb", 6)
    monkeypatch.setattr(pynvml, "nvmlLib", FakeNvmlLib([g]))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    info = probe(HostPaths(tmp_path, cg))
    gpu = info["gpus"][0]
    assert gpu["root_port"] == "0000:10:01.0" and gpu["switches"] == ["0000:11:00.0"]
    assert {p["name"]: p["create_id"] for p in gpu["mig_profiles"]}["2g.20gb"] == 14
    assert gpu["mig_instances"][0]["start"] == 6
    sw = next(s for s in info["pcie"] if s["name"] == "0000:11:00.0")
    assert sw["kind"] == "switch" and "0000:13:00.0" in sw["devices"]
    assert len(sw["devices"]) == 3  # the GPU NVML knows, the NIC and the NVMe behind it
    io = info["levers"]["io_throttle"]
    assert io["usable"] is False and "+io" in io["detail"]
    assert info["levers"]["mig"]["usable"]
    text = render(info)
    assert "PCIe path: 0000:10:01.0 -> 0000:11:00.0 -> 0000:13:00.0" in text
    assert "1g.10gb(id 19" in text
    json.dumps(info)  # JSON-serialisable as is
