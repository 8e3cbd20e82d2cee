"""SIGKILL a real daemon process mid-throttle on this machine's real blkio/io controller, then
start ``gpuguardd run`` again over the same state dir: it re-adopts the throttle and lifts it
within one tick of its expiry, or lifts it at once when it expired while the daemon was down.

The killed daemon is the real composition (``app.daemon.build`` on the real backend, journal,
executor, metrics server, run loop); only its policy is scripted to throttle at its first tick,
so the test does not depend on the ladder's diagnosis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuguardd.host.cgroup_io import CgroupIo
from gpuguardd.model.actions import IoLimit
from tests.host.realio import CGROUP_ROOT, real_io_or_skip, scratch_cgroup

pytestmark = [pytest.mark.root]

ROOT = Path(__file__).parents[2]
INTERVAL_S = 0.5
CAP = IoLimit(wbps=10_000_000)

DAEMON = r"""
import sys, threading
from gpuguardd import config
from gpuguardd.app.daemon import build
from gpuguardd.export import logs
from gpuguardd.model.actions import IoLimit, IoThrottle
from tests.reliability.helpers import scripted_policy

cfg_path, devno, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
logs.setup("info")
cfg = config.load(cfg_path, trusted_only=True)
daemon = build(cfg, config_path=cfg_path)
first = []

def script(snap):
    if first:
        return []
    first.append(snap.now)
    return [IoThrottle("etl", devno, IoLimit(wbps=10_000_000), "scripted", snap.now + ttl)]

daemon.engine.policy = scripted_policy(script)
daemon.engine.state = 0

class Tell:
    def publish(self, report):
        if any(o.result.value == "applied" for o in report.outcomes):
            print(f"throttled {report.now}", flush=True)

daemon.engine.publishers = (*daemon.engine.publishers, Tell())
daemon.run(threading.Event(), threading.Event())
"""


def _config(tmp: Path, rel: str, devno: str) -> Path:
    path = tmp / "gpuguardd.toml"
    path.write_text(f"""
[daemon]
interval_s = {INTERVAL_S}
backend = "real"
require_gpu = false
state_dir = "{tmp / 'state'}"
cgroup_root = "{CGROUP_ROOT}"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{tmp / 'run' / 'latency.sock'}"
[control]
socket = "{tmp / 'run' / 'control.sock'}"
[[tenant]]
name = "etl"
class = "batch"
cgroup = "{rel}"
devices = ["{devno}"]
restartable = false
""")
    path.chmod(0o600)
    return path


def _kill_mid_throttle(cfg: Path, devno: str, ttl: float, log: Path) -> float:
    """Start the scripted daemon, wait for its throttle, SIGKILL it; returns the expiry."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(cfg), devno, str(ttl)],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("throttled"), log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return float(line.split()[1]) + ttl


@contextlib.contextmanager
def _gpuguardd(cfg: Path, log: Path):  # type: ignore[no-untyped-def]
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gpuguardd", "run", "--config",
                                 str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(15) == 0, log.read_text()[-3000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def test_sigkilled_daemon_mid_throttle_is_readopted_and_lifted_within_one_tick(
        tmp_path: Path) -> None:
    version, devno = real_io_or_skip(tmp_path)
    (tmp_path / "run").mkdir(mode=0o750)
    io = CgroupIo(CGROUP_ROOT)
    with scratch_cgroup(version, "crash") as (rel, _cg):
        try:
            cfg = _config(tmp_path, rel, devno)
            expires_at = _kill_mid_throttle(cfg, devno, ttl=6.0, log=tmp_path / "killed.log")
            assert io.get_limit(rel, devno) == CAP, "the kill left the kernel limit in place"
            with _gpuguardd(cfg, tmp_path / "restarted.log") as proc:
                lifted_at = None
                while time.time() < expires_at + 10:
                    if io.get_limit(rel, devno) == IoLimit():
                        lifted_at = time.time()
                        break
                    assert proc.poll() is None, (tmp_path / "restarted.log").read_text()
                    time.sleep(0.05)
            text = (tmp_path / "restarted.log").read_text()
            assert lifted_at is not None, text[-3000:]
            assert "readopted" in text
            assert lifted_at >= expires_at - 0.05, "lifted before its expiry"
            # one tick, plus the time to start a Python process if the restart was slow
            assert lifted_at - expires_at <= INTERVAL_S + 0.5, (lifted_at - expires_at, text)
        finally:
            io.set_limit(rel, devno, IoLimit())


def test_sigkilled_daemon_restarted_after_expiry_lifts_the_throttle_at_start(
        tmp_path: Path) -> None:
    version, devno = real_io_or_skip(tmp_path)
    (tmp_path / "run").mkdir(mode=0o750)
    io = CgroupIo(CGROUP_ROOT)
    with scratch_cgroup(version, "crash2") as (rel, _cg):
        try:
            cfg = _config(tmp_path, rel, devno)
            expires_at = _kill_mid_throttle(cfg, devno, ttl=1.0, log=tmp_path / "killed.log")
            while time.time() < expires_at + 0.2:
                time.sleep(0.05)
            assert io.get_limit(rel, devno) == CAP
            with _gpuguardd(cfg, tmp_path / "restarted.log") as proc:
                deadline = time.monotonic() + 15
                while io.get_limit(rel, devno) != IoLimit() and time.monotonic() < deadline:
                    assert proc.poll() is None
                    time.sleep(0.05)
            text = (tmp_path / "restarted.log").read_text()
            assert io.get_limit(rel, devno) == IoLimit(), text[-3000:]
            assert "expired while down" in text
        finally:
            io.set_limit(rel, devno, IoLimit())
