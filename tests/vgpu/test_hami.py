"""Region files built byte for byte from the layout documented in gpuguardd.host.hami."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest

from gpuguardd.host import hami

SIZE = 2008952
PROCS = 1856
SLOT = 1960
TAIL = PROCS + 1024 * SLOT  # proc_num, utilization_switch, recent_kernel, priority


def region_bytes(*, magic: int = 19920718, major: int = 1, minor: int = 2, devices: int = 2,
                 limits: tuple[int, ...] = (8 << 30, 4 << 30), sm: tuple[int, ...] = (30, 50),
                 procs: tuple[tuple[int, int, int, int], ...] = ((1234, 98765, 3 << 30, 40),),
                 size: int = SIZE) -> bytes:
    buf = bytearray(SIZE)
    struct.pack_into("<iIIi", buf, 0, magic, major, minor, 1)
    struct.pack_into("<Q", buf, 16, 4242)  # owner_pid
    struct.pack_into("<Q", buf, 56, devices)
    for i in range(devices):
        uuid = f"GPU-{i:08d}-aaaa-bbbb".encode()
        buf[64 + 96 * i: 64 + 96 * i + len(uuid)] = uuid
        struct.pack_into("<Q", buf, 1600 + 8 * i, limits[i])
        struct.pack_into("<Q", buf, 1728 + 8 * i, sm[i])
    for slot, (pid, hostpid, used0, util0) in enumerate(procs):
        base = PROCS + (slot * 3) * SLOT  # spread out: slots need not be compact
        struct.pack_into("<ii", buf, base, pid, hostpid)
        struct.pack_into("<Q", buf, base + 8 + 32, used0)  # used[0].total
        struct.pack_into("<Q", buf, base + 1032, used0 + 1)  # monitorused[0]
        struct.pack_into("<Q", buf, base + 1160 + 16, util0)  # device_util[0].sm_util
        struct.pack_into("<i", buf, base + 1928, 1)  # status
    struct.pack_into("<iiii", buf, TAIL, len(procs), 1, 7, 0)
    return bytes(buf[:size]) if size <= SIZE else bytes(buf) + bytes(size - SIZE)


def make(root: Path, data: bytes) -> Path:
    d = hami.container_dir(root, "pod-uid-1", "llm")
    d.mkdir(parents=True)
    p = d / "GPU-00000000.cache"
    p.write_bytes(data)
    return p


def test_layout_constants_match_the_header() -> None:
    assert hami.REGION_SIZE == SIZE and hami.OFF_PROC_NUM == TAIL
    assert hami.OFF_LIMIT == 1600 and hami.OFF_SM_LIMIT == 1728


@pytest.mark.parametrize("minor", [1, 2])
def test_read_limits_and_procs(tmp_path: Path, minor: int) -> None:
    p = make(tmp_path, region_bytes(minor=minor))
    assert hami.region_files(tmp_path, "pod-uid-1", "llm") == [p]
    r = hami.HamiRegion(p).read()
    assert (r.major, r.minor, r.device_num) == (1, minor, 2)
    assert r.uuids == ("GPU-00000000-aaaa-bbbb", "GPU-00000001-aaaa-bbbb")
    assert r.limit_bytes[:2] == (8 << 30, 4 << 30) and r.sm_limit_pct[:2] == (30, 50)
    assert r.proc_num == 1
    (proc,) = r.procs
    assert (proc.slot, proc.pid, proc.hostpid, proc.status) == (0, 1234, 98765, 1)
    assert proc.used_bytes[0] == 3 << 30 and proc.monitor_bytes[0] == (3 << 30) + 1
    assert proc.sm_util[0] == 40 and r.used_bytes(0) == 3 << 30


def test_write_touches_only_the_eight_bytes_and_restores(tmp_path: Path) -> None:
    before = region_bytes()
    p = make(tmp_path, before)
    reg = hami.HamiRegion(p)
    res = reg.set_memory_limit(1, 6 << 30)
    assert res.changed and res.old == 4 << 30
    res = reg.set_sm_limit(0, 45)
    assert res.changed and res.old == 30
    after = p.read_bytes()
    diff = [i for i in range(SIZE) if before[i] != after[i]]
    assert diff and all(1608 <= i < 1616 or 1728 <= i < 1736 for i in diff)
    assert struct.unpack_from("<ii", after, TAIL + 4) == (1, 7)  # utilization_switch, recent_kernel
    assert reg.set_sm_limit(0, 45).changed is False  # write only if different
    assert reg.set_sm_limit(0, 60).old == 45
    assert reg.originals == {("limit", 1): 4 << 30, ("sm_limit", 0): 30}
    reg.restore()
    assert p.read_bytes() == before


@pytest.mark.parametrize(("data", "message"), [
    (region_bytes(magic=1234), "magic"),
    (region_bytes(major=2), "version 2.2 is unknown"),
    (region_bytes(minor=9), "version 1.9 is unknown"),
    (region_bytes(size=SIZE - 8), "size"),
    (region_bytes(size=SIZE + 4096), "size"),
    (b"\x00" * 8, "too short"),
])
def test_unknown_layouts_are_refused_before_any_write(
    tmp_path: Path, data: bytes, message: str
) -> None:
    p = make(tmp_path, data)
    reg = hami.HamiRegion(p)
    with pytest.raises(hami.HamiError, match=message):
        reg.read()
    with pytest.raises(hami.HamiError, match=message):
        reg.set_memory_limit(0, 1 << 30)
    assert p.read_bytes() == data


def test_bad_arguments(tmp_path: Path) -> None:
    reg = hami.HamiRegion(make(tmp_path, region_bytes(devices=2)))
    with pytest.raises(hami.HamiError, match="device 2 out of range"):
        reg.set_memory_limit(2, 1 << 30)
    with pytest.raises(hami.HamiError, match=r"1\.\.100"):
        reg.set_sm_limit(0, 0)
    with pytest.raises(hami.HamiError, match="no such region"):
        hami.HamiRegion(tmp_path / "nope.cache").read()
    with pytest.raises(hami.HamiError, match="bad pod uid"):
        hami.container_dir(tmp_path, "../etc", "x")


def test_concurrent_readers_see_old_or_new_never_torn(tmp_path: Path) -> None:
    p = make(tmp_path, region_bytes())
    values = (4 << 30, (1 << 63) + 12345)  # differ in every 4-byte half
    seen: set[int] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        r = hami.HamiRegion(p)
        while not stop.is_set():
            try:
                seen.add(r.read(procs=False).limit_bytes[1])
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    w = hami.HamiRegion(p)
    for i in range(300):
        w.set_memory_limit(1, values[i % 2])
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors and seen <= set(values) and seen


def test_k8s_patch_plan() -> None:
    plan = hami.k8s_patch_plan(namespace="llm", owner_kind="Deployment", owner_name="qwen",
                               container="vllm", container_index=0, share_pct=31,
                               memory_bytes=(12 << 30) + 1)
    limits = plan["strategic_merge_patch"]["spec"]["template"]["spec"]["containers"][0]
    assert limits["name"] == "vllm"
    assert limits["resources"]["limits"] == {"nvidia.com/gpucores": "31",
                                             "nvidia.com/gpumem": str(12 * 1024 + 1)}
    assert plan["json_patch"][0]["path"].endswith("/containers/0/resources/limits/"
                                                  "nvidia.com~1gpucores")
