import json
import os

import pytest
from structlog.testing import capture_logs

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit, IoRelease, IoThrottle, MigResize, MpsLimit, Result
from gpuguardd.runtime.executor import MPS_ENV, Executor
from gpuguardd.runtime.journal import Journal, JournalError
from tests.fakes import FakeHost

CAP = IoLimit(rbps=50_000_000)


def throttle(expires_at: float | None = 100.0, limit: IoLimit = CAP) -> IoThrottle:
    return IoThrottle("t2", "8:0", limit, reason="t1 p99 high", expires_at=expires_at)


def make(tmp_path, host=None, **kw):
    host = host or FakeHost()
    return host, Executor(host, Journal(tmp_path, wall_clock_now=0.0), **kw)


def test_throttle_journals_saves_original_and_restores_at_expiry(tmp_path):
    host, ex = make(tmp_path, FakeHost(limits={("t2", "8:0"): IoLimit(wbps=9)}))
    [o] = ex.apply([throttle()], now=10)
    assert o.result is Result.APPLIED and host.limits[("t2", "8:0")] == CAP
    doc = json.loads((tmp_path / "journal.json").read_text())
    assert doc["entries"][0]["status"] == "applied"
    assert doc["entries"][0]["original"] == {"rbps": None, "wbps": 9, "riops": None,
                                             "wiops": None}
    assert ex.expire(now=99) == []
    [r] = ex.expire(now=100)
    assert r.result is Result.REVERTED and host.limits[("t2", "8:0")] == IoLimit(wbps=9)
    assert len(ex.journal) == 0


def test_reissuing_same_throttle_writes_nothing_but_renews_expiry(tmp_path):
    host, ex = make(tmp_path)
    ex.apply([throttle(expires_at=100)], now=0)
    [o] = ex.apply([throttle(expires_at=200)], now=50)
    assert o.result is Result.UNCHANGED and host.writes == 1
    assert ex.expire(now=150) == []
    # the original is the one from before the *first* write
    tighter = throttle(expires_at=200, limit=IoLimit(rbps=10_000_000))
    ex.apply([tighter], now=60)
    ex.apply([IoRelease("t2", "8:0", reason="calm")], now=70)
    assert host.limits[("t2", "8:0")] == IoLimit()


def test_read_back_mismatch_is_a_failure(tmp_path):
    class Liar(FakeHost):
        def set_io_limit(self, tenant, device, limit):
            self.writes += 1  # the kernel ignored us

    _, ex = make(tmp_path, Liar())
    [o] = ex.apply([throttle()], now=0)
    assert o.result is Result.FAILED and "read back" in o.detail


def test_temporary_error_backs_off_permanent_marks_unavailable(tmp_path):
    host = FakeHost(fail_next=[LeverError("EBUSY", retry_after_s=30)])
    _, ex = make(tmp_path, host)
    with capture_logs() as logs:
        assert ex.apply([throttle()], now=0)[0].result is Result.FAILED
    assert logs[0]["event"] == "lever_failed"
    assert "backing off" in ex.apply([throttle()], now=10)[0].detail
    assert ex.apply([throttle()], now=31)[0].result is Result.APPLIED
    other = IoThrottle("t3", "8:0", CAP, expires_at=100)
    host.fail_next.append(LeverError("no io controller for t3", permanent=True))
    assert ex.apply([other], now=40)[0].result is Result.UNAVAILABLE
    writes = host.writes
    assert ex.apply([other], now=400)[0].result is Result.UNAVAILABLE
    assert host.writes == writes and "io:t3:8:0" in ex.unavailable()


def test_dry_run_writes_nothing(tmp_path):
    host, ex = make(tmp_path, dry_run=True)
    [o] = ex.apply([throttle()], now=0)
    assert o.result is Result.DRY_RUN and host.writes == 0
    assert not (tmp_path / "journal.json").exists()
    assert [e.key for e in ex.active()] == ["io:t2:8:0"]


def test_restore_all_on_exit_lifts_throttles_and_mps(tmp_path):
    host, ex = make(tmp_path)
    ex.apply([throttle(), MpsLimit("t3", 40, expires_at=500)], now=0)
    assert host.restarts == [("t3", None, {MPS_ENV: "40"})]
    outcomes = ex.restore_all("SIGTERM")
    assert {o.result for o in outcomes} == {Result.REVERTED}
    assert host.limits[("t2", "8:0")] == IoLimit()
    assert host.restarts[-1] == ("t3", None, {})
    assert len(ex.journal) == 0


def test_crash_then_restart_restores_expired_and_readopts_live(tmp_path):
    host = FakeHost()
    _, ex = make(tmp_path, host)
    ex.apply([throttle(expires_at=100),
              IoThrottle("t4", "8:16", CAP, expires_at=1000)], now=0)
    del ex  # SIGKILL: nothing restored
    ex2 = Executor(host, Journal(tmp_path, wall_clock_now=200.0))
    outcomes = ex2.recover(now=200)
    assert [o.action.tenant for o in outcomes] == ["t2"]
    assert host.limits[("t2", "8:0")] == IoLimit()
    assert host.limits[("t4", "8:16")] == CAP  # re-adopted, still in force
    assert [e.key for e in ex2.active()] == ["io:t4:8:16"]
    assert ex2.expire(now=1000)[0].result is Result.REVERTED


def test_uncertain_write_is_restored_on_recovery(tmp_path):
    class Crashy(FakeHost):
        def set_io_limit(self, tenant, device, limit):
            super().set_io_limit(tenant, device, limit)
            raise SystemExit("killed between write and journal update")

    host = Crashy()
    _, ex = make(tmp_path, host)
    with pytest.raises(SystemExit):
        ex.apply([throttle(expires_at=10_000)], now=0)
    ex2 = Executor(FakeHost(limits=dict(host.limits)), Journal(tmp_path, wall_clock_now=1.0))
    [o] = ex2.recover(now=1)
    assert o.result is Result.REVERTED
    assert ex2.host.limits[("t2", "8:0")] == IoLimit()  # type: ignore[attr-defined]


def test_corrupt_journal_is_quarantined(tmp_path):
    (tmp_path / "journal.json").write_text("{not json")
    with capture_logs() as logs:
        j = Journal(tmp_path, wall_clock_now=1234.0)
    assert len(j) == 0
    assert (tmp_path / "journal.json.corrupt-1234").exists()
    assert logs[0]["event"] == "journal_corrupt"


def test_world_writable_state_dir_is_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(JournalError, match="world-writable"):
        Journal(d, wall_clock_now=0)


def test_mig_resize_runs_resumable_steps(tmp_path):
    host = FakeHost()
    old = host.mig_create(0, "1g.10gb", 0)
    resize = MigResize(0, old.gi_id, "t1", "1g.10gb", "2g.20gb", 0, reason="t1 compute bound")
    host.in_use.add(old.gi_id)  # someone else still on it: destroy must fail, plan must wait
    _, ex = make(tmp_path, host)
    [o] = ex.apply([resize], now=0)
    assert o.result is Result.FAILED and host.stopped == ["t1"]
    host.in_use.clear()
    # the daemon dies here; a new one resumes from the journal without stopping t1 again
    ex2 = Executor(host, Journal(tmp_path, wall_clock_now=40), dry_run=False)
    snap = host.observe(40)
    outcomes = ex2.advance(snap)
    assert outcomes[0].detail.startswith("old instance destroyed")
    assert host.stopped == ["t1"]
    host.busy.add(0)  # reconfiguring: wait
    assert ex2.advance(host.observe(41)) == []
    host.busy.clear()
    ex2.advance(host.observe(60))  # create
    ex2.advance(host.observe(61))  # restart on the new instance
    new = list(host.instances.values())
    assert [i.profile for i in new] == ["2g.20gb"]
    assert host.restarts[-1][0] == "t1" and host.restarts[-1][1].gi_id == new[0].gi_id
    assert len(ex2.journal) == 0
