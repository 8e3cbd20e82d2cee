"""Faults of the real host's levers and sources, driven through the engine: cgroup writes
failing (ENOENT as a tenant exits, EACCES, EINVAL), tenant hooks hanging or failing, MPS
control absent or hanging, latency endpoints answering garbage, nothing, or never."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpuguardd.config import HooksConfig, LatencySourceConfig
from gpuguardd.host import cgroup_io
from gpuguardd.host.mps import MpsControl
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.real import RealHost
from gpuguardd.model.actions import IoLimit, IoThrottle, MpsLimit, Result
from gpuguardd.model.snapshot import Snapshot
from tests.host.test_real import config
from tests.reliability.conftest import real_host
from tests.reliability.helpers import events, make_engine, metric, scripted_policy

DEV = "8:16"
ETL = "system.slice/etl.service"
CAP = IoLimit(wbps=20_000_000)
ORIGINAL = IoLimit(wbps=1048576)  # what the fake tree's io.max holds



def throttle_every_tick(snap: Snapshot) -> list[IoThrottle]:
    return [IoThrottle("t2", DEV, CAP, "t1 p99 30 ms > 15 ms", expires_at=snap.now + 10)]


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("code,permanent", [(errno.EACCES, True), (errno.EINVAL, True),
                                            (errno.EROFS, True), (errno.EBUSY, False)])
def test_cgroup_write_errors_fail_the_lever_not_the_loop(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, code: int,
        permanent: bool) -> None:
    def refuse(path: Path, text: str) -> None:
        raise OSError(code, "injected")

    monkeypatch.setattr(cgroup_io, "_write", refuse)
    host = real_host(tmp_path, tree)
    engine, collector = make_engine(tmp_path / "state", host,
                                    scripted_policy(throttle_every_tick), host.config)
    try:
        with capture_logs() as logs:
            results = [engine.tick(float(t)).outcomes[-1].result for t in range(0, 8, 2)]
    finally:
        host.close()
    assert engine.ticks == 4 and engine.tick_errors == 0
    want = Result.UNAVAILABLE if permanent else Result.FAILED
    assert set(results) == {want}
    assert host.cgroups is not None and host.cgroups.get_limit(ETL, DEV) == ORIGINAL
    key = f"io:t2:{DEV}"
    if permanent:
        assert metric(collector, "gpuguard_lever_unavailable", lever=key) == 1
        assert errno.errorcode[code] in events(logs, "lever_unavailable")[0]["error"]
    else:
        assert metric(collector, "gpuguard_actions_total", kind="io_throttle",
                      result="failed") == 4
        assert errno.errorcode[code] in events(logs, "lever_failed")[0]["error"]
    assert host.lever_health()["io"] >= 1


@pytest.mark.usefixtures("no_gpu")
def test_tenant_cgroup_gone_at_write_is_retried_when_it_returns(tmp_path: Path,
                                                                  tree: Path) -> None:
    cg = tree / "cgroup" / ETL
    aside = tree / "aside"
    cg.rename(aside)  # the tenant is between two runs: systemd removed its cgroup
    host = real_host(tmp_path, tree)
    engine, _ = make_engine(tmp_path / "state", host, scripted_policy(throttle_every_tick),
                            host.config)
    try:
        first = engine.tick(0.0).outcomes[-1]
        assert first.result is Result.FAILED and "ENOENT" in first.detail
        aside.rename(cg)
        assert engine.tick(2.0).outcomes[-1].detail.startswith("backing off")
        assert engine.tick(12.0).outcomes[-1].result is Result.APPLIED  # CgroupGone: 10 s
        assert host.cgroups is not None and host.cgroups.get_limit(ETL, DEV) == CAP
    finally:
        engine.shutdown("test end")
        host.close()
    assert host.cgroups.get_limit(ETL, DEV) == ORIGINAL


@pytest.mark.usefixtures("no_gpu")
def test_tenant_exiting_mid_throttle_leaves_nothing_behind(tmp_path: Path, tree: Path) -> None:
    host = real_host(tmp_path, tree)
    once = {0.0: throttle_every_tick}
    engine, collector = make_engine(
        tmp_path / "state", host,
        scripted_policy(lambda s: once[s.now](s) if s.now in once else []), host.config)
    try:
        assert engine.tick(0.0).outcomes[0].result is Result.APPLIED
        shutil.rmtree(tree / "cgroup" / ETL)  # the service stopped; its cgroup went away
        engine.tick(2.0)
        [o] = engine.tick(10.0).outcomes
        assert o.result is Result.REVERTED and "gone" in o.detail
        assert len(engine.executor.journal) == 0
        cg = tree / "cgroup" / ETL
        cg.mkdir()  # it starts again, under the same path, with a fresh cgroup
        (cg / "io.max").write_text("")
        assert engine.tick(12.0).outcomes == ()
    finally:
        host.close()
    assert metric(collector, "gpuguard_actions_total", kind="io_throttle", result="reverted") == 1


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("script,detail", [("import time; time.sleep(30)", "timed out"),
                                           ("import sys; sys.exit(3)", "exited 3")])
def test_hanging_or_failing_hook_fails_its_action_and_backs_off(
        tmp_path: Path, tree: Path, script: str, detail: str) -> None:
    hooks = HooksConfig(restart=[sys.executable, "-c", script], timeout_s=1.0)
    host = real_host(tmp_path, tree, hooks=hooks)
    limit = MpsLimit("t2", 50, "t1 p99 high; t2 busy on the same GPU", expires_at=600.0)
    engine, collector = make_engine(tmp_path / "state", host,
                                    scripted_policy(lambda s: [limit]), host.config)
    try:
        t0 = time.monotonic()
        with capture_logs() as logs:
            [o] = engine.tick(0.0).outcomes
        first_tick_s = time.monotonic() - t0
        assert o.result is Result.FAILED and detail in o.detail
        assert first_tick_s < 1.0 + 2.0, "a hook's timeout bounds the tick"
        t0 = time.monotonic()
        [o2] = engine.tick(2.0).outcomes
        assert o2.detail.startswith("backing off") and time.monotonic() - t0 < 0.5
    finally:
        host.close()
    assert metric(collector, "gpuguard_actions_total", kind="mps_limit", result="failed") == 2
    assert events(logs, "lever_failed")[0]["lever"] == "mps:t2"
    assert host.hooks.failures == {"restart": 1}


def test_mps_control_absent_is_permanent_and_not_available(tmp_path: Path) -> None:
    mps = MpsControl(str(tmp_path / "nvidia-cuda-mps-control"))
    assert mps.available() is False
    with pytest.raises(LeverError) as e:
        mps.set_default_active_thread_percentage(50)
    assert e.value.permanent and "not found" in str(e.value)


def test_mps_control_hanging_times_out_as_a_temporary_failure(tmp_path: Path) -> None:
    prog = tmp_path / "nvidia-cuda-mps-control"
    prog.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    prog.chmod(0o755)
    mps = MpsControl(str(prog), timeout_s=0.5)
    t0 = time.monotonic()
    assert mps.available() is False
    with pytest.raises(LeverError) as e:
        mps.set_active_thread_percentage(1234, 50)
    assert not e.value.permanent and "timed out" in str(e.value)
    assert time.monotonic() - t0 < 4.0


# -- latency sources -----------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    mode = "garbage"

    def do_GET(self) -> None:
        body = {"garbage": b"\x00\xff not { prometheus\n# TYPE x histogram\nx_bucket{le=\"a\"} 1\n",
                "empty": b"",
                "nan": b"# TYPE vllm:time_to_first_token_seconds histogram\n"
                       b"vllm:time_to_first_token_seconds_bucket{le=\"NaN\"} NaN\n"
                       b"vllm:time_to_first_token_seconds_bucket{le=\"+Inf\"} -5\n",
                "huge": b"#" * (17 * 1024 * 1024)}[self.server.mode]  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("mode", ["garbage", "empty", "nan", "huge", "silent", "refused"])
def test_bad_latency_source_marks_the_window_unknown_in_bounded_time(
        tmp_path: Path, tree: Path, metrics_server: ThreadingHTTPServer, silent_port: int,
        mode: str) -> None:
    metrics_server.mode = mode  # type: ignore[attr-defined]
    port = {"silent": silent_port, "refused": 1}.get(mode, metrics_server.server_address[1])
    cfg = config(tmp_path, require_gpu=False)
    t3 = dataclasses.replace(cfg.tenants[2], latency=LatencySourceConfig(
        source="prometheus", url=f"http://127.0.0.1:{port}/metrics", timeout_s=0.3))
    cfg = dataclasses.replace(cfg, tenants=(*cfg.tenants[:2], t3))
    host = RealHost(cfg, HostPaths(tree, tree / "cgroup"), monitor=False)
    try:
        for now in (0.0, 2.0):
            t0 = time.monotonic()
            snap = host.observe(now)
            assert time.monotonic() - t0 < 0.3 + 1.0 + 0.5
            assert not snap.tenants["t3"].latency.ok, "garbage must be unknown, not empty"
        assert snap.tenants["t1"].latency.ok  # the other tenants are unaffected
    finally:
        host.close()


@pytest.mark.usefixtures("no_gpu")
def test_push_tenant_that_sends_nothing_has_an_empty_window(tmp_path: Path,
                                                           tree: Path) -> None:
    host = real_host(tmp_path, tree)
    try:
        w = host.observe(0.0).tenants["t1"].latency
        assert w.ok and w.ttft.count == 0 and w.ttft.quantile(0.99) is None
    finally:
        host.close()



def test_host_exit_never_reapplies_a_throttle_left_by_a_killed_daemon(tmp_path: Path) -> None:
    """After a crash the kernel still holds the dead daemon's throttle; the new daemon lifts
    it (journal recovery) and must not "restore" it when it exits."""
    from tests.host.test_cgroup_io import make_v2

    cg = make_v2(tmp_path / "cg", ETL)
    (cg / "io.max").write_text(f"{DEV} rbps=max wbps=20000000 riops=max wiops=max\n")
    io = cgroup_io.CgroupIo(tmp_path / "cg")
    assert io.set_limit(ETL, DEV, IoLimit()) is True
    assert io.restore_all() == []
    assert io.get_limit(ETL, DEV) == IoLimit()


def test_restore_all_after_a_throttle_puts_back_an_unlimited_original(tmp_path: Path) -> None:
    from tests.host.test_cgroup_io import make_v2

    make_v2(tmp_path / "cg", ETL)
    io = cgroup_io.CgroupIo(tmp_path / "cg")
    assert io.set_limit(ETL, "259:0", CAP) is True  # 259:0 had no rule: unlimited
    assert io.restore_all() == []
    assert io.get_limit(ETL, "259:0") == IoLimit()
