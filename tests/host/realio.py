"""Helpers for tests that use this machine's real block layer and cgroupfs.

They create short-lived v1 blkio (or v2) cgroups named ``gpuguardd-test-*``, run antagonists in
them and always remove them again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuguardd.host.cgroup_io import CgroupVersion, block_device_of, detect_version

CGROUP_ROOT = Path("/sys/fs/cgroup")
SYS_DEV_BLOCK = Path("/sys/dev/block")


def real_io_or_skip(workdir: Path) -> tuple[CgroupVersion, str]:
    """(cgroup version, whole-disk devno of ``workdir``) or pytest.skip with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups and move processes")
    if shutil.which("dd") is None:
        pytest.skip("no dd binary")
    version = detect_version(CGROUP_ROOT)
    if version is None:
        pytest.skip(f"no v1 blkio hierarchy or v2 io controller at {CGROUP_ROOT}")
    devno = block_device_of(workdir, SYS_DEV_BLOCK)
    if devno is None:
        pytest.skip(f"{workdir} is not on a real block device (tmpfs/overlay/network)")
    probe = cgroup_dir(version, f"gpuguardd-test-probe-{os.getpid()}")
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        pytest.skip(f"cgroupfs not writable at {probe.parent}: {e}")
    return version, devno


def cgroup_dir(version: CgroupVersion, rel: str) -> Path:
    return (CGROUP_ROOT / "blkio" if version is CgroupVersion.V1 else CGROUP_ROOT) / rel


@contextlib.contextmanager
def scratch_cgroup(version: CgroupVersion, name: str) -> Iterator[tuple[str, Path]]:
    rel = f"gpuguardd-test-{name}-{os.getpid()}"
    path = cgroup_dir(version, rel)
    path.mkdir()
    try:
        yield rel, path
    finally:
        for _ in range(50):  # processes take a moment to leave after being killed
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


ANTAGONIST = r"""
import os, subprocess, sys, threading
procs, target, parallel, bs_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(procs, "w") as f:
    f.write(str(os.getpid()))
print("in-cgroup", flush=True)

def loop(k):
    while True:
        subprocess.run(["dd", "if=/dev/zero", f"of={target}.{k}", f"bs={bs_mib}M",
                        f"count={256 // bs_mib}",
                        "oflag=direct", "conv=notrunc", "status=none"], check=False)

for k in range(parallel):
    threading.Thread(target=loop, args=(k,), daemon=True).start()
threading.Event().wait()
"""


@contextlib.contextmanager
def dd_antagonist(cgroup: Path, target: Path, parallel: int = 1, bs_mib: int = 1
                  ) -> Iterator[subprocess.Popen[str]]:
    """``parallel`` loops of ``dd bs=<bs_mib>M oflag=direct`` into ``target.<k>`` (256 MiB each,
    rewritten) in ``cgroup``; children inherit the cgroup, so every dd is charged to it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ANTAGONIST, str(cgroup / "cgroup.procs"), str(target),
         str(parallel), str(bs_mib)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in-cgroup"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for k in range(parallel):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{target}.{k}").unlink()
