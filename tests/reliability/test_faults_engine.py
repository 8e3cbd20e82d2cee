"""Fault injection at the engine/executor boundary (fake host): the loop keeps ticking, a
failing lever backs off, nothing stays throttled, and every failure shows in metrics and logs."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

from structlog.testing import capture_logs

from gpuguardd.host.cgroup_io import CgroupGone
from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit, IoThrottle, Result
from gpuguardd.model.snapshot import Snapshot
from tests.fakes import FakeHost
from tests.reliability.helpers import FaultyHost, events, make_engine, metric, scripted_policy

CAP = IoLimit(rbps=20_000_000)
TIGHTER = IoLimit(rbps=10_000_000)
KEY = "io:t2:8:0"


def throttle(now: float, limit: IoLimit = CAP, ttl: float = 10.0) -> IoThrottle:
    return IoThrottle("t2", "8:0", limit, reason="t1 p99 42 ms > 15 ms", expires_at=now + ttl)


def once_at(t: float, make: object) -> object:
    def script(snap: Snapshot) -> list[IoThrottle]:
        return [make(snap.now)] if snap.now == t else []  # type: ignore[operator]

    return script


def test_loop_keeps_ticking_while_observe_raises(tmp_path: Path) -> None:
    fake = FakeHost()
    host = FaultyHost(fake, faults={"observe": [RuntimeError("NVML hung up")] * 3})
    engine, collector = make_engine(tmp_path, host, scripted_policy(lambda s: []))
    stop = threading.Event()
    clock = iter(range(10_000))
    t = threading.Thread(target=engine.run, args=(stop,),
                         kwargs={"clock": lambda: float(next(clock)), "sleep_scale": 200.0})
    with capture_logs() as logs:
        t.start()
        while engine.ticks < 5 and t.is_alive():
            threading.Event().wait(0.01)
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert engine.tick_errors == 3 and engine.ticks >= 5
    assert metric(collector, "gpuguard_tick_errors_total") == 3
    assert len(events(logs, "tick_failed")) == 3
    assert events(logs, "ready"), "READY comes after the first good tick"


def test_throttle_expires_even_while_observe_keeps_failing(tmp_path: Path) -> None:
    """A broken observation path (NVML, sysfs) must not keep a throttle past its expiry."""
    fake = FakeHost()
    host = FaultyHost(fake)
    engine, _ = make_engine(tmp_path, host, scripted_policy(once_at(0.0, throttle)))
    engine.tick(0.0)
    assert fake.limits[("t2", "8:0")] == CAP
    host.always["observe"] = RuntimeError("observe broken")
    for now in (2.0, 4.0, 6.0, 8.0, 10.0):
        try:
            engine.tick(now)
        except RuntimeError:
            engine.tick_errors += 1
    assert fake.limits[("t2", "8:0")] == IoLimit(), "throttle outlived its expiry"
    assert len(engine.executor.journal) == 0


def test_temporary_write_failure_backs_off_then_retries(tmp_path: Path) -> None:
    fake = FakeHost(fail_next=[LeverError("EBUSY", retry_after_s=30.0)])
    engine, collector = make_engine(
        tmp_path, fake, scripted_policy(lambda s: [throttle(s.now)]))
    with capture_logs() as logs:
        [o] = engine.tick(0.0).outcomes
        assert o.result is Result.FAILED
        [o] = engine.tick(2.0).outcomes
        assert o.result is Result.FAILED and "backing off" in o.detail
        writes = fake.writes
        engine.tick(30.0)
    assert fake.writes == writes + 1 and fake.limits[("t2", "8:0")] == CAP
    assert metric(collector, "gpuguard_actions_total", kind="io_throttle", result="failed") == 2
    [failed] = events(logs, "lever_failed")
    assert failed["lever"] == KEY and failed["retry_in_s"] == 30.0
    assert any(e["event"] == "decision" and e["result"] == "failed" for e in logs)


def test_permanent_failure_marks_lever_unavailable_in_metrics(tmp_path: Path) -> None:
    fake = FakeHost()
    host = FaultyHost(fake, always={"set_io_limit": LeverError(
        "write io.max: Permission denied (EACCES)", permanent=True)})
    engine, collector = make_engine(
        tmp_path, host, scripted_policy(lambda s: [throttle(s.now)]))
    with capture_logs() as logs:
        engine.tick(0.0)
        [o] = engine.tick(2.0).outcomes
    assert o.result is Result.UNAVAILABLE
    assert host.calls["set_io_limit"] == 1, "a permanent failure is not retried"
    assert metric(collector, "gpuguard_lever_unavailable", lever=KEY) == 1
    assert metric(collector, "gpuguard_actions_total", kind="io_throttle",
                  result="unavailable") == 2
    assert events(logs, "lever_unavailable")[0]["lever"] == KEY


def test_unexpected_exception_in_a_lever_does_not_fail_the_tick(tmp_path: Path) -> None:
    """A bug-class exception (not LeverError/OSError) in one lever fails that action only."""
    other = IoThrottle("t3", "8:0", CAP, reason="t1 slow", expires_at=100.0)

    class Buggy(FakeHost):
        def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None:
            if tenant == "t2":
                raise ValueError("unexpected")
            super().set_io_limit(tenant, device, limit)

    fake = Buggy()
    engine, collector = make_engine(
        tmp_path, fake, scripted_policy(lambda s: [throttle(s.now), other]))
    with capture_logs() as logs:
        report = engine.tick(0.0)
    assert metric(collector, "gpuguard_actions_total", kind="io_throttle", result="failed") == 1
    assert [o.result for o in report.outcomes] == [Result.FAILED, Result.APPLIED]
    assert fake.limits[("t3", "8:0")] == CAP
    assert engine.tick_errors == 0
    assert "ValueError" in events(logs, "lever_failed")[0]["error"]


def test_expiry_is_not_blocked_by_a_failed_tightening(tmp_path: Path) -> None:
    """The apply path backing off must not delay the restore path past the expiry."""
    fake = FakeHost()
    script = {0.0: [throttle(0.0)], 4.0: [throttle(0.0, TIGHTER)]}
    engine, _ = make_engine(tmp_path, fake, scripted_policy(lambda s: script.get(s.now, [])))
    engine.tick(0.0)
    fake.fail_next.append(LeverError("EBUSY", retry_after_s=300.0))
    assert engine.tick(4.0).outcomes[0].result is Result.FAILED
    assert fake.limits[("t2", "8:0")] == CAP
    engine.tick(10.0)
    assert fake.limits[("t2", "8:0")] == IoLimit(), "restore waited for the apply back-off"


def test_shutdown_restores_even_while_the_lever_backs_off(tmp_path: Path) -> None:
    fake = FakeHost()
    script = {0.0: [throttle(0.0, ttl=600)], 2.0: [throttle(0.0, TIGHTER, ttl=600)]}
    engine, _ = make_engine(tmp_path, fake, scripted_policy(lambda s: script.get(s.now, [])))
    engine.tick(0.0)
    fake.fail_next.append(LeverError("EBUSY", retry_after_s=300.0))
    engine.tick(2.0)
    [o] = engine.shutdown("SIGTERM")
    assert o.result is Result.REVERTED
    assert fake.limits[("t2", "8:0")] == IoLimit()


def test_tenant_exit_during_restore_is_not_retried_forever(tmp_path: Path) -> None:
    """ENOENT: the tenant's cgroup went away; a throttle on it has nothing left to undo."""
    fake = FakeHost()
    engine, collector = make_engine(tmp_path, fake, scripted_policy(once_at(0.0, throttle)))
    engine.tick(0.0)
    gone = CgroupGone("read /sys/fs/cgroup/system.slice/etl.service: cgroup gone (ENOENT)")
    host = FaultyHost(fake, always={"get_io_limit": gone, "set_io_limit": gone})
    engine.host = engine.executor.host = host
    with capture_logs():
        [o] = engine.tick(10.0).outcomes
    assert o.result is Result.REVERTED and "gone" in o.detail
    assert len(engine.executor.journal) == 0
    assert metric(collector, "gpuguard_actions_total", kind="io_throttle", result="reverted") == 1


def test_oserror_from_a_lever_is_a_temporary_failure(tmp_path: Path) -> None:
    fake = FakeHost()
    host = FaultyHost(fake, faults={"set_io_limit": [OSError(errno.EINTR, "Interrupted")]})
    engine, _ = make_engine(tmp_path, host, scripted_policy(lambda s: [throttle(s.now)]))
    assert engine.tick(0.0).outcomes[0].result is Result.FAILED
    assert engine.tick(31.0).outcomes[-1].result is Result.APPLIED


def test_permanent_error_while_restoring_keeps_the_record_for_the_next_attempt(
        tmp_path: Path) -> None:
    """Only a vanished cgroup ends a throttle record; an EACCES on the way back (the limit
    may still be in force) keeps it, and the shutdown tries once more."""
    fake = FakeHost()
    host = FaultyHost(fake)
    engine, collector = make_engine(tmp_path, host, scripted_policy(once_at(0.0, throttle)))
    engine.tick(0.0)
    host.faults["get_io_limit"] = [LeverError("read io.max: Permission denied (EACCES)",
                                              permanent=True)]
    [o] = engine.tick(10.0).outcomes
    assert o.result is Result.UNAVAILABLE and fake.limits[("t2", "8:0")] == CAP
    assert [e.key for e in engine.executor.active()] == [KEY]
    assert metric(collector, "gpuguard_lever_unavailable", lever=f"restore:{KEY}") == 1
    [r] = engine.shutdown("SIGTERM")
    assert r.result is Result.REVERTED and fake.limits[("t2", "8:0")] == IoLimit()
