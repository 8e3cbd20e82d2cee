"""The control socket and `gpuguardd ctl`: protocol, permissions, operator release and holds."""

import json
import os
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass, field

import pytest

from gpuguardd import config
from gpuguardd.cli import main
from gpuguardd.export.control import (
    ControlApi,
    ControlServer,
    OperatorQueue,
    explain_from_status,
)
from gpuguardd.export.http import MetricsServer
from gpuguardd.export.metrics import GpuguardCollector, make_registry
from gpuguardd.model.actions import IoLimit, IoThrottle, Migrate, Result
from gpuguardd.model.snapshot import Placement
from gpuguardd.policy import Decision, Quantiles, TenantStatus
from gpuguardd.runtime.engine import Engine, Policy
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from gpuguardd.runtime.status import StatusBoard
from tests.fakes import FakeHost

CFG = config.loads("""
[[tenant]]
name = "t1"
class = "latency"
slo = { ttft_p99_ms = 15.0 }
[[tenant]]
name = "t2"
[[tenant]]
name = "t10"
""")
THROTTLE = IoLimit(rbps=10**7)


@dataclass(frozen=True)
class State:
    tenants: dict = field(default_factory=dict)


def decide(state, snap, cfg):
    """Throttle t2 for t1 while t1's p99 is over 15 ms (expiring 100 s later)."""
    p99 = snap.tenants["t1"].latency.ttft.quantile(0.99)
    bad = p99 is not None and p99 > 0.015
    st = TenantStatus("t1", int(bad), Quantiles(p99, p99, p99) if p99 is not None else None,
                      None, window_ok=True, violating=bad, violation_windows_total=0,
                      last_reason=f"t1 ttft p99 {p99 * 1e3:.0f}ms > 15ms" if bad else "")
    actions = (IoThrottle("t2", "8:0", THROTTLE, f"t1 ttft p99 {p99 * 1e3:.0f}ms > 15ms",
                          snap.now + 100),) if bad else ()
    return State({"t1": st}), Decision(actions, tuple(a.reason for a in actions))


POLICY = Policy(lambda cfg: State(), decide, lambda s, o, now: s)


class Rig:
    def __init__(self, tmp_path, *, release_wait_s=10.0, allowed_uids=None, **server_kw):
        self.host = FakeHost(ttft={"t1": [0.030] * 50})
        self.executor = Executor(self.host, Journal(tmp_path / "state", wall_clock_now=0))
        self.board = StatusBoard(self.executor)
        self.operator = OperatorQueue(default_hold_s=50.0)
        self.collector = GpuguardCollector(lambda: CFG)
        self.engine = Engine(self.host, self.executor, CFG, POLICY,
                             publishers=(self.board, self.collector), operator=self.operator)
        self.api = ControlApi(self.board, self.operator, lambda: CFG,
                              release_wait_s=release_wait_s)
        self.path = str(tmp_path / "run" / "control.sock")
        self.server = ControlServer(self.path, self.api, allowed_uids=allowed_uids, **server_kw)
        self.server.start()
        self.now = 0.0
        self._stop = threading.Event()
        self._ticker = None

    def tick(self, dt=2.0):
        self.now += dt
        return self.engine.tick(self.now)

    def start_ticking(self):
        """The engine thread: a tick every 20 ms of real time, 2 s of engine clock."""
        def loop():
            while not self._stop.wait(0.02):
                self.tick()
        self._ticker = threading.Thread(target=loop, daemon=True)
        self._ticker.start()

    def close(self):
        self._stop.set()
        if self._ticker:
            self._ticker.join(5)
        self.server.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def raw(path, data: bytes, *, shut=True, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(data)
    if shut:
        s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return json.loads(out)


def ctl(capsys, *argv):
    code = main(["ctl", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_socket_is_0600_owned_by_the_daemon_user_and_removed_on_close(tmp_path):
    r = Rig(tmp_path)
    st = os.stat(r.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]
    r.close()
    assert not os.path.exists(r.path)


def test_a_second_daemon_is_refused_and_a_stale_socket_replaced(tmp_path):
    r = Rig(tmp_path)
    try:
        with pytest.raises(OSError, match="in use by a running gpuguardd"):
            ControlServer(r.path, r.api)
    finally:
        r.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(r.path)  # bound, never listening: what a crashed daemon leaves
    stale.close()
    again = ControlServer(r.path, r.api)
    again.start()
    try:
        assert raw(r.path, b'{"cmd": "status"}\n')["ok"] is True
    finally:
        again.close()
    (tmp_path / "run" / "control.sock").write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(r.path, r.api)


def test_only_allowed_peers_are_served(tmp_path):
    r = Rig(tmp_path, allowed_uids=frozenset({os.geteuid() + 4242}))
    try:
        answer = raw(r.path, b'{"cmd": "status"}\n')
        assert answer == {"ok": False, "error": "permission denied"}
    finally:
        r.close()


def test_malformed_oversized_and_slow_requests_get_clear_errors(tmp_path):
    r = Rig(tmp_path, max_request_bytes=128, timeout_s=0.3)
    try:
        assert "not a JSON object" in raw(r.path, b"{nope\n")["error"]
        assert raw(r.path, b"[1, 2]\n")["error"] == "a request is a JSON object"
        assert "larger than 128 bytes" in raw(r.path, b'{"cmd": "' + b"x" * 500 + b'"}\n')["error"]
        assert "unknown cmd 'frobnicate'" in raw(r.path, b'{"cmd": "frobnicate"}\n')["error"]
        assert "tenant: expected a non-empty string" in raw(
            r.path, b'{"cmd": "explain"}\n')["error"]
        assert raw(r.path, b'{"cmd": "explain", "tenant": "zz"}\n')["error"] == \
            "unknown tenant 'zz'"
        assert "hold_s" in raw(r.path, b'{"cmd": "release", "key": "k", "hold_s": -1}\n')["error"]
        t0 = time.monotonic()
        slow = raw(r.path, b'{"cmd": "sta', shut=False)  # never finishes its line
        assert "no complete request within 0.3 s" in slow["error"]
        assert time.monotonic() - t0 < 3
        # ... and the server still serves afterwards
        assert raw(r.path, b'{"cmd": "status"}')["ok"] is True  # EOF ends a line too
    finally:
        r.close()


def test_status_and_explain_over_the_socket_and_the_cli(rig, capsys):
    rig.tick()  # t1 slow -> t2 throttled
    assert rig.host.limits[("t2", "8:0")] == THROTTLE
    code, out, err = ctl(capsys, "--socket", rig.path, "status")
    assert code == 0, err
    assert "io:t2:8:0" in out and "io_throttle" in out and "in 100s" in out
    assert "t1 ttft p99 30ms > 15ms" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("t1 ")}
    level, p99, slo, tpot = lines["t1"][1:5]
    assert (level, slo, tpot) == ("1", "15ms", "-")
    assert abs(float(p99.removesuffix("ms")) - 30.0) < 0.5  # the sketch's relative accuracy
    code, out, _ = ctl(capsys, "--socket", rig.path, "--json", "status")
    st = json.loads(out)
    assert [a["key"] for a in st["active_actions"]] == ["io:t2:8:0"]
    assert st["slo"]["t1"]["ttft_p99_ms"] == 15.0
    # explain t1: the throttle of t2 is *for* t1 (its reason names t1)
    code, out, _ = ctl(capsys, "--socket", rig.path, "explain", "t1")
    assert code == 0
    assert "io_throttle t2 -> applied" in out and "because: t1 ttft p99 30ms" in out
    assert "last reason: t1 ttft p99 30ms > 15ms" in out
    code, out, _ = ctl(capsys, "--socket", rig.path, "--json", "explain", "t10")
    assert json.loads(out)["decisions"] == []  # "t1" in a reason is not "t10"
    code, _, err = ctl(capsys, "--socket", rig.path, "explain", "nobody")
    assert code == 1 and "unknown tenant 'nobody'" in err


def test_release_restores_now_and_holds_the_lever(rig, capsys, logs):
    rig.tick()
    assert rig.host.limits[("t2", "8:0")] == THROTTLE
    rig.start_ticking()
    code, out, err = ctl(capsys, "--socket", rig.path, "release", "io:t2:8:0",
                         "--reason", "maintenance")
    assert code == 0, err
    assert out.startswith("io:t2:8:0: reverted") and "may not re-apply it for 50s" in out
    assert rig.host.limits[("t2", "8:0")] == IoLimit()
    (event,) = [e for e in logs if e["event"] == "operator_release"]
    assert (event["key"], event["result"], event["reason"]) == \
        ("io:t2:8:0", "reverted", "maintenance")
    # the ladder still wants the throttle (t1 is still slow) but the hold vetoes it
    held_ticks = rig.engine.ticks
    while rig.engine.ticks < held_ticks + 5:
        time.sleep(0.01)
    assert rig.host.limits[("t2", "8:0")] == IoLimit()
    last = rig.engine.last_report.outcomes
    assert [o.result for o in last] == [Result.FAILED]
    assert re.fullmatch(r"held by operator until \d+ \(maintenance\)", last[0].detail)
    code, out, _ = ctl(capsys, "--socket", rig.path, "status")
    assert "OPERATOR HOLDS (1)" in out and "maintenance" in out
    code, out, _ = ctl(capsys, "--socket", rig.path, "unhold", "io:t2:8:0")
    assert (code, out) == (0, "io:t2:8:0: hold lifted\n")
    deadline = time.monotonic() + 5
    while rig.host.limits[("t2", "8:0")] != THROTTLE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rig.host.limits[("t2", "8:0")] == THROTTLE  # the ladder may use it again
    code, _, err = ctl(capsys, "--socket", rig.path, "unhold", "io:t2:8:0")
    assert code == 1 and "no operator hold" in err


def test_a_hold_expires_on_the_engine_clock(rig):
    rig.tick()
    fut = rig.operator.submit("io:t2:8:0", hold_s=5.0)
    rig.tick()  # drains: released, held until now + 5
    assert fut.result(0)["result"] == "reverted"
    assert rig.host.limits[("t2", "8:0")] == IoLimit()
    rig.tick()  # +2 s: still held
    assert rig.host.limits[("t2", "8:0")] == IoLimit()
    rig.tick(4.0)  # +6 s: hold over, the ladder throttles again
    assert rig.host.limits[("t2", "8:0")] == THROTTLE
    assert rig.operator.holds() == []


def test_release_errors(rig, capsys):
    rig.tick()
    rig.start_ticking()
    code, _, err = ctl(capsys, "--socket", rig.path, "release", "io:t9:1:1")
    assert code == 1 and "no active action with key 'io:t9:1:1'" in err
    rig.executor.journal.put(rig.executor.journal.get("io:t2:8:0").__class__(
        "place:t2", Migrate("t2", Placement(0), Placement(1), "move"), "applied", None, 0.0,
        None))
    code, _, err = ctl(capsys, "--socket", rig.path, "release", "place:t2")
    assert code == 1 and "not temporary" in err
    code, _, err = ctl(capsys, "--socket", rig.path, "release", "io:t2:8:0", "--hold", "-3")
    assert code == 2 and "--hold" in err


def test_a_release_the_engine_never_picks_up_changes_nothing(tmp_path, capsys):
    r = Rig(tmp_path, release_wait_s=0.3)
    try:
        r.tick()
        t0 = time.monotonic()
        code, _, err = ctl(capsys, "--socket", r.path, "release", "io:t2:8:0")
        assert code == 1 and "did not pick the request up within 0 s" in err
        assert "nothing was changed" in err
        assert time.monotonic() - t0 < 5
        r.tick()  # the engine comes back: the cancelled request is not carried out
        assert r.host.limits[("t2", "8:0")] == THROTTLE
        assert r.operator.holds() == []
    finally:
        r.close()


def test_a_stuck_client_does_not_delay_the_tick(rig):
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.connect(rig.path)  # connects and says nothing
    try:
        t0 = time.perf_counter()
        rig.tick()
        assert time.perf_counter() - t0 < 0.5
        assert raw(rig.path, b'{"cmd": "status"}\n')["ok"] is True
    finally:
        hung.close()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    code, _, err = ctl(capsys, "--socket", str(tmp_path / "none.sock"), "status")
    assert code == 1 and "no such socket: is gpuguardd running?" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[control]\nsocket = \"relative.sock\"\n")
    code, _, err = ctl(capsys, "--config", str(bad), "status")
    assert code == 2 and "control.socket" in err
    code, _, err = ctl(capsys, "--url", "127.0.0.1:1", "release", "k")
    assert code == 2 and "needs the control socket" in err


def test_socket_path_comes_from_the_config(tmp_path, rig, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[control]\nsocket = "{rig.path}"\n')
    code, out, _ = ctl(capsys, "--config", str(cfg), "status")
    assert code == 0 and out.startswith("gpuguardd ")


def test_read_only_commands_over_http_status(rig, capsys):
    rig.tick()
    server = MetricsServer("127.0.0.1:0", make_registry(rig.collector), rig.api.status)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}"
        code, out, err = ctl(capsys, "--url", url, "status")
        assert code == 0, err
        assert "io:t2:8:0" in out and "t1 ttft p99 30ms > 15ms" in out
        code, out, _ = ctl(capsys, "--url", url, "--json", "explain", "t1")
        assert [d["action"]["tenant"] for d in json.loads(out)["decisions"]] == ["t2"]
        code, _, err = ctl(capsys, "--url", url, "explain", "zz")
        assert code == 1 and "unknown tenant" in err
    finally:
        server.close()


def test_explain_matches_whole_tenant_names():
    status = {"decisions": [
        {"action": {"tenant": "etl", "reason": "chat-2 ttft p99 30ms"}},
        {"action": {"tenant": "etl", "reason": "chat ttft p99 31ms"}},
        {"action": {"tenant": "chat", "reason": "x"}},
    ]}
    assert len(explain_from_status(status, "chat", 10)["decisions"]) == 2
    assert len(explain_from_status(status, "chat-2", 10)["decisions"]) == 1
    assert len(explain_from_status(status, "chat", 1)["decisions"]) == 1


def test_control_config_is_validated():
    with pytest.raises(config.ConfigError, match=r"control.socket: 'x.sock' must be an absolute"):
        config.loads('[control]\nsocket = "x.sock"\n')
    with pytest.raises(config.ConfigError, match=r"control.max_request_bytes: must be >= 64"):
        config.loads("[control]\nmax_request_bytes = 1\n")
    assert config.loads('[control]\nsocket = ""\n').control.socket == ""
    assert config.Config().control.socket == "/run/gpuguardd/control.sock"


def test_release_with_the_real_ladder_on_the_simulated_host():
    """The hook in the real engine: a released throttle is lifted on the host, the ladder
    absorbs the outcome and carries on without re-applying it, no tick fails."""
    import importlib.util

    if importlib.util.find_spec("gpuguardd.sim.scenario") is None:
        pytest.skip("gpuguardd.sim is not on this branch yet")
    from gpuguardd.app.daemon import build

    # a restart priced above any throttle: the ladder throttles the ETL first
    d = build(config.loads('[control]\nsocket = ""\n[policy]\nmove_outage_s = 1000.0\n'),
              config_path=None, sim="noisy-neighbor", listen="127.0.0.1:0")
    d.server.start()  # (close() waits for its serving loop)
    try:
        now, key = 0.0, None
        while key is None and now < 600:
            now += 2.0
            d.engine.tick(now)
            key = next((e.key for e in d.engine.executor.active() if e.key.startswith("io:")),
                       None)
        assert key is not None, "the noisy-neighbor scenario never throttled"
        _, tenant, device = key.split(":", 2)
        assert d.host.get_io_limit(tenant, device) != IoLimit()
        fut = d.engine.operator.submit(key, hold_s=300.0, reason="test")
        now += 2.0
        report = d.engine.tick(now)
        assert fut.result(0)["result"] == "reverted"
        assert next(o.result for o in report.outcomes if o.action.key == key) is Result.REVERTED
        assert d.host.get_io_limit(tenant, device) == IoLimit()
        reapplied = []
        for _ in range(100):
            now += 2.0
            report = d.engine.tick(now)
            reapplied += [o for o in report.outcomes if o.action.key == key
                          and o.result is Result.APPLIED]
        assert reapplied == []
        assert d.engine.tick_errors == 0
        assert d.host.get_io_limit(tenant, device) == IoLimit()
    finally:
        d.server.close()
        d.host.close()
        if d.tmpdir is not None:
            d.tmpdir.cleanup()


def test_a_second_daemon_stops_before_touching_the_running_ones_state(tmp_path, monkeypatch):
    """The control socket is bound first: a daemon started by mistake next to a running one
    fails before it reads (and would restore from) the shared journal or builds the host."""
    from gpuguardd.app import daemon as app_daemon
    from gpuguardd.host import real

    running = Rig(tmp_path)  # the running daemon, serving on its control socket
    try:
        state = tmp_path / "state"
        journal = state / "journal.json"
        before = journal.read_bytes() if journal.exists() else None
        cfg = config.loads(f"""
[daemon]
backend = "real"
require_gpu = false
state_dir = "{state}"
[metrics]
listen = "127.0.0.1:0"
[control]
socket = "{running.path}"
""")

        def must_not_run(*a, **k):
            raise AssertionError("the host was built before the single-instance check")

        monkeypatch.setattr(real, "build_real_host", must_not_run)
        with pytest.raises(app_daemon.StartupError, match="in use by a running gpuguardd"):
            app_daemon.build(cfg, config_path=None)
        assert (journal.read_bytes() if journal.exists() else None) == before
        assert raw(running.path, b'{"cmd": "status"}\n')["ok"] is True  # still the first one's
    finally:
        running.close()


def test_a_bound_but_not_yet_started_server_says_so(tmp_path):
    server = ControlServer(str(tmp_path / "c.sock"), None)
    server.start()
    try:
        assert raw(str(tmp_path / "c.sock"), b'{"cmd": "status"}\n') == {
            "ok": False, "error": "the daemon is starting"}
    finally:
        server.close()
