"""One test per security rule of SECURITY.md; each test is named after its rule."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gpuguardd import config
from gpuguardd.config import HooksConfig
from gpuguardd.export import logs
from gpuguardd.export.http import MetricsServer
from gpuguardd.export.metrics import GpuguardCollector, make_registry
from gpuguardd.host.tenants import SAFE_PATH
from gpuguardd.model.actions import IoLimit, IoThrottle, MpsLimit, Result
from gpuguardd.runtime.journal import Journal, JournalError
from tests.reliability.conftest import real_host
from tests.reliability.helpers import make_engine, scripted_policy

ROOT = Path(__file__).parents[2]
DEV = "8:16"



# -- metrics / status endpoint -------------------------------------------------------------------
@pytest.fixture
def endpoint() -> Iterator[tuple[str, int]]:
    collector = GpuguardCollector(lambda: config.Config())
    srv = MetricsServer("127.0.0.1:0", make_registry(collector), lambda: {"tenants": {}})
    srv.start()
    yield srv.address
    srv.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "PROPFIND", "X-EVIL"])
def test_metrics_endpoint_is_read_only(endpoint: tuple[str, int], method: str) -> None:
    conn = http.client.HTTPConnection(*endpoint, timeout=5)
    conn.request(method, "/status", body=b'{"release": "io:t2:8:0"}')
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
    conn.close()
    conn = http.client.HTTPConnection(*endpoint, timeout=5)
    conn.request("GET", "/status")
    assert conn.getresponse().status == 200


def test_metrics_endpoint_listens_on_loopback_by_default() -> None:
    assert config.Config().metrics.listen.startswith("127.0.0.1:")
    shipped = config.loads((ROOT / "etc" / "gpuguardd.toml").read_text())
    assert shipped.metrics.listen.startswith("127.0.0.1:")


# -- secrets -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("script", ["print('HF_TOKEN=hf_s3cr3t'); raise SystemExit(3)",
                                    "import time; time.sleep(30)"])
def test_no_secrets_in_logs(tmp_path: Path, tree: Path, script: str) -> None:
    """Hook argv arguments and env values never reach the log; secret-looking key=value
    pairs and URL credentials printed by anything are masked by the log pipeline."""
    argv = [sys.executable, "-c", script, "--token=s3cr3t", "http://admin:s3cr3t@host/x"]
    host = real_host(tmp_path, tree, hooks=HooksConfig(restart=argv, timeout_s=1.0))
    out = io.StringIO()
    logs.setup("debug", out, json=True)
    try:
        engine, _ = make_engine(tmp_path / "state", host, scripted_policy(
            lambda s: [MpsLimit("t2", 40, "Authorization: Bearer s3cr3t", expires_at=99.0)]),
            host.config)
        assert engine.tick(0.0).outcomes[0].result is Result.FAILED
        structlog.get_logger("test").warning("probe", url="http://u:s3cr3t@h/metrics",
                                             env={"HF_TOKEN": "s3cr3t"}, password="s3cr3t")
    finally:
        host.close()
        structlog.reset_defaults()
    text = out.getvalue()
    assert "lever_failed" in text and "probe" in text
    assert "s3cr3t" not in text
    for line in text.splitlines():
        json.loads(line)  # still valid JSON lines after masking


# -- control socket ------------------------------------------------------------------------------
def test_control_socket_is_root_only_0600(tmp_path: Path) -> None:
    control = pytest.importorskip("gpuguardd.export.control")
    from gpuguardd.runtime.executor import Executor
    from gpuguardd.runtime.status import StatusBoard
    from tests.fakes import FakeHost

    board = StatusBoard(Executor(FakeHost(), Journal(tmp_path / "state", wall_clock_now=0)))
    api = control.ControlApi(board, control.OperatorQueue(), lambda: config.Config())
    path = tmp_path / "run" / "control.sock"
    srv = control.ControlServer(str(path), api)
    srv.start()
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600 and path.lstat().st_uid == 0
        if os.geteuid() != 0:
            pytest.skip("needs root to try the socket as another user")
        os.chmod(tmp_path, 0o755)
        os.chmod(path.parent, 0o755)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody and try to talk to the daemon
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(path))
                    s.sendall(b'{"cmd": "release", "key": "io:t2:8:0"}\n')
                    os.write(w, b"connected:" + s.recv(200))
                except OSError as e:
                    os.write(w, f"refused:{e.errno}".encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        answer = os.read(r, 300).decode()
        os.close(r)
        assert answer.startswith("refused:13"), answer  # EACCES
    finally:
        srv.close()


# -- tenant names and cgroup paths ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["../t", "a/b", "T1", "", "x" * 64, "t 1", "t\0"])
def test_tenant_names_are_validated(name: str) -> None:
    with pytest.raises(config.ConfigError, match=r"tenant\[0\]\.name"):
        config.from_dict({"tenant": [{"name": name}]})


@pytest.mark.parametrize("cgroup", ["../../etc", "/sys/fs/cgroup/x", "a/../../b", "/", "a\0b"])
def test_cgroup_paths_are_validated(cgroup: str) -> None:
    with pytest.raises(config.ConfigError, match=r"tenant\[0\]\.cgroup"):
        config.from_dict({"tenant": [{"name": "t1", "cgroup": cgroup}]})


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("where", ["cgroup_dir", "control_file"])
def test_no_symlinks_out_of_the_cgroup_root(tmp_path: Path, tree: Path, where: str) -> None:
    """A symlink planted in the cgroup tree (a directory, or the control file itself) that
    points outside the root is never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "io.max"
    victim.write_text("precious\n")
    slice_ = tree / "cgroup" / "system.slice"
    if where == "cgroup_dir":
        os.symlink(outside, slice_ / "evil.service")
        rel = "system.slice/evil.service"
    else:
        rel = "system.slice/etl.service"
        (slice_ / "etl.service" / "io.max").unlink()
        os.symlink(victim, slice_ / "etl.service" / "io.max")
    host = real_host(tmp_path, tree, cgroup=rel)
    engine, _ = make_engine(tmp_path / "state", host, scripted_policy(
        lambda s: [IoThrottle("t2", DEV, IoLimit(wbps=10**7), "t1 slow", expires_at=9.0)]),
        host.config)
    try:
        outcomes = [o for t in (0.0, 40.0) for o in engine.tick(t).outcomes]
    finally:
        engine.shutdown("test")
        host.close()
    assert victim.read_text() == "precious\n"
    applied = [o for o in outcomes if o.result is Result.APPLIED]
    assert applied == [] and outcomes[0].result is Result.UNAVAILABLE, outcomes


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@pytest.mark.usefixtures("no_gpu")
def test_only_the_configured_roots_are_ever_written(tmp_path: Path, tree: Path) -> None:
    """Every filesystem change the daemon makes in-process during a session with throttles,
    restores, a hook run, the journal and the push socket lands under the cgroup root, the
    state dir or the push socket's directory (CPython audit events)."""
    argv = [sys.executable, "-c", "pass"]
    host = real_host(tmp_path, tree, hooks=HooksConfig(restart=argv, stop=argv))
    state = tmp_path / "state"
    roots = [tree / "cgroup", state, Path(host.config.push.socket).parent]
    writes: list[str] = []
    active = threading.Event()

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if not active.is_set() or threading.current_thread() is not threading.main_thread():
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and isinstance(path, str | bytes | os.PathLike):
                writes.append(os.fsdecode(path))
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.symlink",
                       "os.truncate"):
            if isinstance(args[0], str | bytes | os.PathLike):
                writes.append(os.fsdecode(args[0]))
        elif event == "os.rename":
            writes.extend([os.fsdecode(args[0]), os.fsdecode(args[1])])

    sys.addaudithook(audit)
    script = {0.0: [IoThrottle("t2", DEV, IoLimit(wbps=10**7), "t1 slow", expires_at=4.0),
                    MpsLimit("t2", 50, "t1 slow", expires_at=6.0)]}
    engine, _ = make_engine(state, host, scripted_policy(lambda s: script.get(s.now, [])),
                            host.config)
    active.set()
    try:
        for t in (0.0, 2.0, 4.0, 6.0):
            engine.tick(t)
        engine.shutdown("test")
    finally:
        active.clear()
        host.close()
    assert writes, "the audit hook saw nothing: the test would prove nothing"
    # /dev/null: the hook's stdin (subprocess opens it O_RDWR); not a change to anything
    resolved = [Path(os.path.realpath(w)) for w in writes
                if "__pycache__" not in w and w != os.devnull]
    outside = [p for p in resolved
               if not any(p.is_relative_to(os.path.realpath(r)) for r in roots)]
    assert outside == []
    assert any(p.is_relative_to(os.path.realpath(tree / "cgroup")) for p in resolved)


# -- hooks ---------------------------------------------------------------------------------------
@pytest.mark.usefixtures("no_gpu")
def test_hooks_run_as_argv_with_a_timeout_and_a_cleared_environment(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "daemon-env-must-not-leak")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    record = tmp_path / "hook.json"
    pwned = tmp_path / "pwned"
    script = "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, " \
             f"open({str(record)!r}, 'w'))"
    argv = [sys.executable, "-c", script, f"$(touch {pwned})", "; touch " + str(pwned)]
    host = real_host(tmp_path, tree, hooks=HooksConfig(restart=argv, timeout_s=5.0))
    try:
        host.restart_tenant("t2", None, {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"})
    finally:
        host.close()
    got = json.loads(record.read_text())
    assert got["argv"] == argv[3:] and not pwned.exists(), "no shell ever sees the argv"
    env = got["env"]
    assert set(env) - {"PWD", "SHLVL", "_", "LC_CTYPE"} == {
        "PATH", "LANG", "GPUGUARD_TENANT", "GPUGUARD_ACTION", "GPUGUARD_ENV_FILE",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"}
    assert env["PATH"] == SAFE_PATH and env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert host.config.tenants[1].hooks.timeout_s == 5.0


# -- refusing to start ---------------------------------------------------------------------------
def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuguardd", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


@pytest.mark.parametrize("mode", [0o666, 0o662, 0o620])
def test_refuses_to_start_with_a_world_writable_config(tmp_path: Path, mode: int) -> None:
    cfg = tmp_path / "gpuguardd.toml"
    cfg.write_text('[daemon]\nbackend = "sim"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    cfg.chmod(mode)
    r = _run(["run", "--config", str(cfg)])
    assert r.returncode == 2 and "writable" in r.stderr and "Traceback" not in r.stderr


def test_refuses_to_start_with_a_world_writable_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(JournalError, match="world-writable"):
        Journal(state, wall_clock_now=0.0)
    cfg = tmp_path / "gpuguardd.toml"
    cfg.write_text(f"""[daemon]
backend = "real"
require_gpu = false
state_dir = "{state}"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{tmp_path / 'run' / 'latency.sock'}"
[control]
socket = "{tmp_path / 'run' / 'control.sock'}"
""")
    cfg.chmod(0o600)
    r = _run(["run", "--config", str(cfg)])
    assert r.returncode in (1, 2) and "world-writable" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_push_socket_is_not_writable_by_everyone(tmp_path: Path) -> None:
    from gpuguardd.host.push import PushReceiver, PushSocketError

    rx = PushReceiver(tmp_path / "run" / "latency.sock", ["t1"])
    try:
        assert stat.S_IMODE(rx.path.stat().st_mode) == 0o660
        assert not stat.S_IMODE(rx.path.parent.stat().st_mode) & 0o002
    finally:
        rx.close()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(PushSocketError, match="world-writable"):
        PushReceiver(open_dir / "latency.sock", ["t1"])


def test_start_up_failure_after_the_metrics_port_is_bound_exits_cleanly(tmp_path: Path) -> None:
    """A control socket that cannot be bound (here: a directory in its place) fails the start
    with one clear message - after the metrics port was bound, which must be released."""
    (tmp_path / "run" / "control.sock").mkdir(parents=True)
    state = tmp_path / "state"
    cfg = tmp_path / "gpuguardd.toml"
    cfg.write_text(f"""[daemon]
backend = "real"
require_gpu = false
state_dir = "{state}"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{tmp_path / 'run' / 'latency.sock'}"
[control]
socket = "{tmp_path / 'run' / 'control.sock'}"
""")
    cfg.chmod(0o600)
    r = _run(["run", "--config", str(cfg)], timeout=20)
    assert r.returncode == 1 and "control" in r.stderr and "Traceback" not in r.stderr
