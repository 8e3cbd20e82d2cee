import shutil
import subprocess
import threading
import urllib.request
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuguardd import config
from gpuguardd.export.http import MetricsServer
from gpuguardd.export.metrics import GpuguardCollector, make_registry
from gpuguardd.model.actions import IoLimit, IoThrottle
from gpuguardd.policy import Decision, Quantiles, TenantStatus
from gpuguardd.runtime.engine import Engine, Policy
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal
from tests.fakes import FakeHost

CFG = config.loads("""
[[tenant]]
name = "t1"
class = "latency"
slo = { ttft_p99_ms = 15.0 }
[[tenant]]
name = "t2"
""")


@dataclass(frozen=True)
class State:
    tenants: dict = field(default_factory=dict)
    level_changes_total: int = 0


def decide(state, snap, cfg):
    t1 = snap.tenants["t1"].latency.ttft
    p99 = t1.quantile(0.99)
    bad = p99 is not None and p99 > 0.015
    prev = state.tenants.get("t1")
    total = (prev.violation_windows_total if prev else 0) + bad
    st = TenantStatus("t1", int(bad), Quantiles(t1.quantile(0.5), p99, t1.quantile(0.999)),
                      None, window_ok=True, violating=bad, violation_windows_total=total,
                      last_reason="")
    actions = (IoThrottle("t2", "8:0", IoLimit(rbps=10**7), "t1 slow", snap.now + 10),) if bad \
        else ()
    changed = prev is not None and prev.level != st.level
    return State({"t1": st}, state.level_changes_total + changed), \
        Decision(actions, tuple(a.reason for a in actions))


TEST_POLICY = Policy(lambda cfg: State(), decide, lambda s, o, now: s)


def make_engine(tmp_path, host):
    collector = GpuguardCollector(lambda: CFG)
    ex = Executor(host, Journal(tmp_path, wall_clock_now=0))
    return Engine(host, ex, CFG, TEST_POLICY, publishers=(collector,)), collector


def test_tick_observes_decides_applies_publishes(tmp_path):
    host = FakeHost(ttft={"t1": [0.005] * 50})
    engine, collector = make_engine(tmp_path, host)
    engine.tick(0.0)
    assert host.limits == {}
    host.ttft["t1"] = [0.005] * 50 + [0.030] * 5
    report = engine.tick(2.0)
    assert host.limits[("t2", "8:0")] == IoLimit(rbps=10**7)
    assert [o.result.value for o in report.outcomes] == ["applied"]
    host.ttft["t1"] = [0.005] * 50
    engine.tick(20.0)  # the throttle expired at 12 and is restored
    assert host.limits[("t2", "8:0")] == IoLimit()
    text = scrape(collector)
    assert 'gpuguard_actions_total{kind="io_throttle",result="applied"} 1.0' in text
    assert 'gpuguard_actions_total{kind="io_throttle",result="reverted"} 1.0' in text
    assert 'gpuguard_tenant_slo_violation_windows_total{tenant="t1"} 1.0' in text
    assert 'gpuguard_tick_duration_seconds_count 3.0' in text


def test_run_loop_survives_a_failing_tick_and_restores_on_stop(tmp_path):
    class Flaky(FakeHost):
        calls = 0

        def observe(self, now):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("NVML hiccup")
            return super().observe(now)

    host = Flaky(ttft={"t1": [0.05] * 30})
    engine, _ = make_engine(tmp_path, host)
    stop = threading.Event()
    notes = []
    engine.notifier = type("N", (), {"notify": lambda self, s: notes.append(s)})()
    clock = iter(range(0, 10_000, 2))
    engine.config = config.loads("[daemon]\ninterval_s = 0.5\n" + "")  # fast loop
    engine.config = CFG
    t = threading.Thread(target=engine.run, args=(stop,),
                         kwargs={"clock": lambda: float(next(clock)), "sleep_scale": 100.0})
    t.start()
    while engine.ticks < 4:
        threading.Event().wait(0.01)
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive()
    assert engine.tick_errors == 1
    assert notes[0] == "READY=1" and "WATCHDOG=1" in notes and notes[-1] == "STOPPING=1"
    assert host.limits[("t2", "8:0")] == IoLimit()  # restored on the way out


def scrape(collector) -> str:
    from prometheus_client import generate_latest

    return generate_latest(make_registry(collector)).decode()


def test_metrics_contract_names_and_promtool(tmp_path):
    host = FakeHost(ttft={"t1": [0.005] * 50 + [0.030] * 5})
    engine, collector = make_engine(tmp_path, host)
    engine.tick(0.0)
    text = scrape(collector)
    families = {f.name for f in text_string_to_metric_families(text)}
    for name in ("gpuguard_tenant_latency_seconds", "gpuguard_tenant_slo_violation_windows",
                 "gpuguard_tenant_level", "gpuguard_actions", "gpuguard_gpu_pcie_bytes",
                 "gpuguard_tick_duration_seconds", "gpuguard_up"):
        assert name in families
    assert 'gpuguard_tenant_latency_seconds{kind="ttft",quantile="0.99",tenant="t1"}' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_http_endpoint_is_read_only(tmp_path):
    host = FakeHost(ttft={"t1": [0.005] * 20})
    engine, collector = make_engine(tmp_path, host)
    engine.tick(0.0)
    server = MetricsServer("127.0.0.1:0", make_registry(collector), lambda: {"ok": True})
    server.start()
    try:
        base = f"http://127.0.0.1:{server.address[1]}"
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "gpuguard_up 1.0" in body
        assert urllib.request.urlopen(base + "/status", timeout=5).read() == b'{\n "ok": true\n}'
        req = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 405
    finally:
        server.close()


def test_the_decision_log_carries_the_whole_explanation(tmp_path):
    """The action's reason is its summary; the log line also carries the decision's
    explanation (tail, cause, evidence, lever) under ``why``."""
    from structlog.testing import capture_logs

    def explained(state, snap, cfg):
        state, d = decide(state, snap, cfg)
        return state, Decision(d.actions, tuple(
            f"t1 ttft p99 30.0 ms > 15 ms for 1 windows; cause io (r=0.9 with t2); {r}"
            for r in d.reasons))

    host = FakeHost(ttft={"t1": [0.005] * 50 + [0.030] * 5})
    engine = Engine(host, Executor(host, Journal(tmp_path, wall_clock_now=0)), CFG,
                    Policy(lambda cfg: State(), explained, lambda s, o, now: s))
    with capture_logs() as logs:
        engine.tick(0.0)
    (line,) = [e for e in logs if e["event"] == "decision"]
    assert line["reason"] == "t1 slow" and line["result"] == "applied"
    assert line["why"] == ("t1 ttft p99 30.0 ms > 15 ms for 1 windows; cause io (r=0.9 with t2); "
                           "t1 slow")
