import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def logs():
    """Log events as data (and off stdout, where the CLI's output is asserted on)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def http_get(url: str, timeout_s: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read()
    except OSError:
        return None


@dataclass
class SimDaemon:
    proc: subprocess.Popen
    port: int
    control: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_peak_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="package")
def sim_daemon(tmp_path_factory):
    """`gpuguardd run --sim --speed 20` on a free loopback port, shared by tests/ops and
    stopped after them (no background load on the rest of the suite)."""
    if importlib.util.find_spec("gpuguardd.sim.scenario") is None:
        pytest.skip("gpuguardd.sim is not on this branch yet (the simulated host)")
    d = tmp_path_factory.mktemp("simd")
    os.chmod(d, 0o755)
    cfg = d / "gpuguardd.toml"
    control = d / "run" / "control.sock"
    cfg.write_text(f'[control]\nsocket = "{control}"\n')
    cfg.chmod(0o644)
    port = free_port()
    log = d / "daemon.log"
    exe = shutil.which("gpuguardd", path=str(Path(sys.executable).parent)) or "gpuguardd"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "run", "--sim", "--speed", "20", "--listen", f"127.0.0.1:{port}",
             "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=d)
    daemon = SimDaemon(proc, port, str(control), log)
    try:
        wait_for(lambda: proc.poll() is not None or b"gpuguard_tenant_latency_seconds{"
                 in (http_get(daemon.url + "/metrics") or b""), 30, "the first latency sample")
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {log.read_text()[-2000:]}")
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
