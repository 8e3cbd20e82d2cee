"""cgroup I/O lever and counters on fake v1 and v2 trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpuguardd.host import cgroup_io
from gpuguardd.host.cgroup_io import CgroupGone, CgroupIo, CgroupVersion, detect_version
from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import IoCounters

V1_FILES = (
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
)


def make_v2(root: Path, tenant: str = "system.slice/etl.service") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cg = root / tenant
    cg.mkdir(parents=True)
    (cg / "io.max").write_text("8:16 rbps=max wbps=1048576 riops=max wiops=max\n")
    (cg / "io.stat").write_text(
        "8:16 rbytes=1000 wbytes=2000 rios=3 wios=4 dbytes=0 dios=0\n"
        "259:0 rbytes=5 wbytes=6 rios=7 wios=8 dbytes=0 dios=0\n"
    )
    return cg


def make_v1(root: Path, tenant: str = "etl") -> Path:
    blk = root / "blkio"
    blk.mkdir(parents=True, exist_ok=True)
    for f in V1_FILES:
        (blk / f).write_text("")
    cg = blk / tenant
    cg.mkdir(parents=True)
    for f in V1_FILES:
        (cg / f).write_text("")
    (cg / "blkio.throttle.read_iops_device").write_text("8:0 500\n")
    (cg / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 0\n8:0 Discard 0\n"
        "8:0 Total 12288\nTotal 12288\n"
    )
    (cg / "blkio.throttle.io_serviced_recursive").write_text(
        "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n"
    )
    return cg


def test_detects_versions(tmp_path: Path) -> None:
    make_v2(tmp_path / "a")
    make_v1(tmp_path / "b")
    (tmp_path / "c").mkdir()
    assert detect_version(tmp_path / "a") is CgroupVersion.V2
    assert detect_version(tmp_path / "b") is CgroupVersion.V1
    assert detect_version(tmp_path / "c") is None
    with pytest.raises(LeverError) as e:
        CgroupIo(tmp_path / "c")
    assert e.value.permanent


def test_v2_stats_and_limits_roundtrip(tmp_path: Path) -> None:
    cg = make_v2(tmp_path)
    io = CgroupIo(tmp_path)
    rel = "system.slice/etl.service"
    assert io.stats(rel) == (IoCounters("8:16", 1000, 2000, 3, 4), IoCounters("259:0", 5, 6, 7, 8))
    assert io.get_limit(rel, "8:16") == IoLimit(wbps=1048576)
    assert io.get_limit(rel, "9:9") == IoLimit()

    assert io.set_limit(rel, "8:16", IoLimit(rbps=10_000_000, wbps=5_000_000)) is True
    assert (cg / "io.max").read_text() == "8:16 rbps=10000000 wbps=5000000 riops=max wiops=max\n"
    # unchanged value: nothing written
    (cg / "io.max").chmod(0o444)
    try:
        assert io.set_limit(rel, "8:16", IoLimit(rbps=10_000_000, wbps=5_000_000)) is False
    finally:
        (cg / "io.max").chmod(0o644)
    assert io.original(rel, "8:16") == IoLimit(wbps=1048576)
    assert io.restore_all() == []
    assert io.get_limit(rel, "8:16") == IoLimit(wbps=1048576)
    assert io.original(rel, "8:16") is None


def test_v1_stats_and_limits_roundtrip(tmp_path: Path) -> None:
    cg = make_v1(tmp_path)
    io = CgroupIo(tmp_path)
    assert io.version is CgroupVersion.V1
    assert io.stats("etl") == (IoCounters("8:0", rbytes=4096, wbytes=8192, rios=1, wios=2),)
    assert io.get_limit("etl", "8:0") == IoLimit(riops=500)
    assert io.set_limit("etl", "8:0", IoLimit(wbps=10_485_760, riops=500))
    assert (cg / "blkio.throttle.write_bps_device").read_text() == "8:0 10485760\n"
    # only the file that changed was written
    assert (cg / "blkio.throttle.read_iops_device").read_text() == "8:0 500\n"
    assert io.get_limit("etl", "8:0") == IoLimit(wbps=10_485_760, riops=500)
    io.restore_all()
    assert (cg / "blkio.throttle.write_bps_device").read_text() == "8:0 0\n"
    assert io.get_limit("etl", "8:0") == IoLimit(riops=500)


def test_v1_falls_back_to_non_recursive_counters(tmp_path: Path) -> None:
    cg = make_v1(tmp_path)
    (cg / "blkio.throttle.io_service_bytes_recursive").unlink()
    (cg / "blkio.throttle.io_service_bytes").write_text("8:0 Read 7\n8:0 Write 9\n")
    assert CgroupIo(tmp_path).stats("etl")[0].rbytes == 7


@pytest.mark.parametrize(
    "rel", ["/etc", "../x", "a/../../x", "", "/", "a/./b", "a\0b"]
)
def test_rejects_unsafe_paths(tmp_path: Path, rel: str) -> None:
    make_v2(tmp_path)
    with pytest.raises(LeverError) as e:
        CgroupIo(tmp_path).resolve(rel)
    assert e.value.permanent


def test_rejects_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    make_v2(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "io.max").write_text("")
    os.symlink(outside, root / "evil")
    io = CgroupIo(root)
    with pytest.raises(LeverError, match="outside"):
        io.set_limit("evil", "8:16", IoLimit(wbps=1))
    assert (outside / "io.max").read_text() == ""


def test_missing_cgroup_is_temporary_and_restore_forgets_it(tmp_path: Path) -> None:
    cg = make_v2(tmp_path)
    io = CgroupIo(tmp_path)
    rel = "system.slice/etl.service"
    with pytest.raises(CgroupGone) as e:
        io.get_limit("system.slice/other.service", "8:16")
    assert not e.value.permanent
    io.set_limit(rel, "8:16", IoLimit(wbps=7))
    for f in cg.iterdir():
        f.unlink()
    cg.rmdir()  # the tenant exited and its cgroup went away
    assert io.restore_all() == []
    assert io.original(rel, "8:16") is None


def test_missing_io_max_means_controller_not_enabled(tmp_path: Path) -> None:
    cg = make_v2(tmp_path)
    (cg / "io.max").unlink()
    with pytest.raises(LeverError, match="subtree_control") as e:
        CgroupIo(tmp_path).set_limit("system.slice/etl.service", "8:16", IoLimit(wbps=1))
    assert e.value.permanent


def test_write_the_kernel_ignores_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_v2(tmp_path)
    monkeypatch.setattr(cgroup_io, "_write", lambda path, text: None)
    with pytest.raises(LeverError, match="kernel shows") as e:
        CgroupIo(tmp_path).set_limit("system.slice/etl.service", "8:16", IoLimit(wbps=1))
    assert e.value.permanent


def test_permission_denied_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_v2(tmp_path)

    def denied(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cgroup_io, "_write", denied)
    with pytest.raises(LeverError) as e:
        CgroupIo(tmp_path).set_limit("system.slice/etl.service", "8:16", IoLimit(wbps=1))
    assert e.value.permanent and "EACCES" in str(e.value)


@pytest.mark.parametrize("bad", ["sda", "8:", "8:0:1", "a:b"])
def test_rejects_bad_device(tmp_path: Path, bad: str) -> None:
    make_v2(tmp_path)
    with pytest.raises(LeverError):
        CgroupIo(tmp_path).get_limit("system.slice/etl.service", bad)


def test_rejects_nonpositive_limit(tmp_path: Path) -> None:
    make_v2(tmp_path)
    with pytest.raises(LeverError):
        CgroupIo(tmp_path).set_limit("system.slice/etl.service", "8:16", IoLimit(wbps=0))


def test_parse_diskstats() -> None:
    text = (
        " 254       0 vda 100 0 8 0 50 0 16 0 0 0 0 0 0 0 0 0 0\n"
        " 254       1 vda1 1 0 2 0 3 0 4 0 0 0 0 0 0 0 0 0 0\n"
        "garbage\n"
    )
    assert cgroup_io.parse_diskstats(text) == {"254:0": 24 * 512, "254:1": 6 * 512}
    assert cgroup_io.parse_diskstats(text, whole_disks=frozenset({"254:0"})) == {"254:0": 12288}
