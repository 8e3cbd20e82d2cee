"""The io lever on this machine's real blk-throttle: a dd antagonist slows down, then recovers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpuguardd.host.cgroup_io import CgroupIo
from gpuguardd.model.actions import IoLimit
from tests.host.realio import CGROUP_ROOT, dd_antagonist, real_io_or_skip, scratch_cgroup

pytestmark = pytest.mark.root


def _write_rate(io: CgroupIo, rel: str, devno: str, seconds: float) -> float:
    def wbytes() -> int:
        return next((c.wbytes for c in io.stats(rel) if c.device == devno), 0)

    b0, t0 = wbytes(), time.monotonic()
    time.sleep(seconds)
    return (wbytes() - b0) / (time.monotonic() - t0)


def test_throttle_slows_real_dd_and_restore_lifts_it(tmp_path: Path) -> None:
    version, devno = real_io_or_skip(tmp_path)
    io = CgroupIo(CGROUP_ROOT)
    cap = 10 * 1024 * 1024
    with scratch_cgroup(version, "dd") as (rel, cg), dd_antagonist(cg, tmp_path / "dd.bin"):
        time.sleep(0.5)
        free = _write_rate(io, rel, devno, 1.5)
        assert io.set_limit(rel, devno, IoLimit(wbps=cap)) is True
        assert io.get_limit(rel, devno) == IoLimit(wbps=cap)
        time.sleep(0.5)  # let in-flight requests drain
        capped = _write_rate(io, rel, devno, 2.0)
        assert io.restore_all() == []
        assert io.get_limit(rel, devno) == IoLimit()
        time.sleep(0.3)
        lifted = _write_rate(io, rel, devno, 1.0)
    print(f"dd write rate: free {free / 1e6:.0f} MB/s, capped {capped / 1e6:.1f} MB/s "
          f"(cap {cap / 1e6:.1f}), lifted {lifted / 1e6:.0f} MB/s")
    assert free > 3 * cap, "the disk is too slow here to see the throttle"
    assert capped < 1.3 * cap
    assert lifted > 3 * cap
