"""Crash safety: the daemon is SIGKILLed at the worst moments (the host changed, the journal
does not know yet; the journal half written) and the next start restores or re-adopts every
action. The "hardware" is a :class:`DiskHost` whose state outlives the killed process."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gpuguardd.model.actions import Action, IoLimit, IoThrottle, MigResize, Result
from gpuguardd.model.snapshot import Snapshot
from gpuguardd.runtime import journal as journal_mod
from gpuguardd.runtime.journal import Journal, JournalError
from tests.reliability.diskhost import DiskHost
from tests.reliability.helpers import events, make_engine, scripted_policy

CAP = IoLimit(wbps=20_000_000)
TTL = 10.0
RESIZE = MigResize(0, 1, "t1", "1g.10gb", "2g.20gb", 0, reason="t1 p99 40 ms > 15 ms")


def _throttle_script(snap: Snapshot) -> Sequence[Action]:
    return [IoThrottle("t2", "8:0", CAP, "t1 slow", expires_at=TTL)] if snap.now == 0 else []


def _resize_script(snap: Snapshot) -> Sequence[Action]:
    return [RESIZE] if snap.now == 0 else []


SCRIPTS: dict[str, Callable[[Snapshot], Sequence[Action]]] = {
    "throttle": _throttle_script, "resize": _resize_script, "idle": lambda s: []}


def _daemon(state_dir: str, host_file: str, crash: tuple[str, int] | None, script: str,
            ticks: Sequence[float], kill_after: float | None, torn_flush: int | None) -> None:
    """The child: a daemon that is SIGKILLed at the chosen moment."""
    if torn_flush is not None:
        real_replace = os.replace
        flushes = [0]

        def replace(src: str, dst: str | os.PathLike[str]) -> None:
            if Path(dst).name == "journal.json":
                flushes[0] += 1
                if flushes[0] == torn_flush:  # temp file written and fsynced, not renamed
                    os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        journal_mod.os.replace = replace  # type: ignore[assignment]
    host = DiskHost(Path(host_file), crash=crash)
    engine, _ = make_engine(Path(state_dir), host, scripted_policy(SCRIPTS[script]))
    for now in ticks:
        engine.tick(now)
        if kill_after is not None and now >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


def run_and_kill(tmp: Path, script: str, *, crash: tuple[str, int] | None = None,
                 ticks: Sequence[float] = (0.0, 2.0, 4.0, 6.0), kill_after: float | None = None,
                 torn_flush: int | None = None) -> None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_daemon, args=(str(tmp / "state"), str(tmp / "host.json"), crash,
                                          script, ticks, kill_after, torn_flush))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, f"child was not killed (exit {p.exitcode})"


def restart(tmp: Path, now: float, script: str = "idle") -> tuple[object, DiskHost, list]:
    """The next start: build over the same state dir and host; recover; return the engine."""
    host = DiskHost(tmp / "host.json")
    engine, _ = make_engine(tmp / "state", host, scripted_policy(SCRIPTS[script]))
    with capture_logs() as logs:
        outcomes = engine.executor.recover(now)
    return engine, host, [outcomes, logs]


def with_instance(tmp: Path) -> DiskHost:
    host = DiskHost(tmp / "host.json")
    doc = host.state()
    doc["instances"] = {"1": {"profile": "1g.10gb", "start": 0}}
    host._save(doc)
    return host


# -- throttles -----------------------------------------------------------------------------------
def test_killed_between_write_and_journal_mark_restores_the_uncertain_write(
        tmp_path: Path) -> None:
    run_and_kill(tmp_path, "throttle", crash=("set_io_limit", 1))
    assert DiskHost(tmp_path / "host.json").limit("t2", "8:0") == CAP  # the kernel has it
    _, host, (outcomes, _) = restart(tmp_path, now=1.0)
    assert [o.result for o in outcomes] == [Result.REVERTED]
    assert host.limit("t2", "8:0") == IoLimit()


@pytest.mark.parametrize("restart_at", [5.0, 6.0, 9.0])
def test_killed_mid_throttle_readopts_and_expires_within_one_tick(
        tmp_path: Path, restart_at: float) -> None:
    run_and_kill(tmp_path, "throttle", kill_after=4.0)
    engine, host, (outcomes, logs) = restart(tmp_path, now=restart_at)
    assert outcomes == [] and events(logs, "readopted")[0]["expires_at"] == TTL
    assert host.limit("t2", "8:0") == CAP, "re-adopted, not dropped"
    now = restart_at
    while host.limit("t2", "8:0") != IoLimit():
        now += 2.0  # the daemon's tick
        engine.tick(now)  # type: ignore[attr-defined]
        assert now < TTL + 2.0 + 1e-9, "the throttle outlived its expiry by more than a tick"
    assert len(engine.executor.journal) == 0  # type: ignore[attr-defined]


def test_killed_and_restarted_after_expiry_restores_at_once(tmp_path: Path) -> None:
    run_and_kill(tmp_path, "throttle", kill_after=4.0)
    _, host, (outcomes, _) = restart(tmp_path, now=TTL + 300)
    assert [o.detail.endswith("(expired while down)") for o in outcomes] == [True]
    assert host.limit("t2", "8:0") == IoLimit()


@pytest.mark.parametrize("flush", [1, 2])
def test_torn_journal_write_leaves_the_previous_journal(tmp_path: Path, flush: int) -> None:
    """Killed inside the journal's write-then-rename: the old document is intact, and the
    action is restored (flush 2: the write happened, its 'applied' mark did not)."""
    run_and_kill(tmp_path, "throttle", torn_flush=flush)
    doc = json.loads((tmp_path / "state" / "journal.json").read_text()) if flush > 1 else None
    if doc is not None:
        assert [e["status"] for e in doc["entries"]] == ["intent"]
    assert list((tmp_path / "state").glob(".journal.*")), "the kill left its temp file"
    _, host, (_outcomes, logs) = restart(tmp_path, now=1.0)
    assert not events(logs, "journal_corrupt")
    assert not list((tmp_path / "state").glob(".journal.*")), "stale temp files are removed"
    assert host.limit("t2", "8:0") == IoLimit()


# -- MIG plans -----------------------------------------------------------------------------------
@pytest.mark.parametrize("crash", [("stop_tenant", 1), ("mig_destroy", 1), ("mig_create", 1),
                                   ("restart_tenant", 1)])
def test_killed_mid_mig_plan_resumes_and_converges(tmp_path: Path,
                                                   crash: tuple[str, int]) -> None:
    with_instance(tmp_path)
    run_and_kill(tmp_path, "resize", crash=crash)
    engine, host, _ = restart(tmp_path, now=10.0)
    for now in (10.0, 12.0, 14.0, 16.0):
        engine.tick(now)  # type: ignore[attr-defined]
    doc = host.state()
    assert list(doc["instances"].values()) == [{"profile": "2g.20gb", "start": 0}]
    new_gi = int(next(iter(doc["instances"])))
    assert doc["stopped"] == [] and doc["restarts"][-1][:2] == ["t1", new_gi]
    assert len(engine.executor.journal) == 0  # type: ignore[attr-defined]


def test_mig_create_failing_permanently_rolls_back_to_the_old_profile(tmp_path: Path) -> None:
    with_instance(tmp_path)
    host = DiskHost(tmp_path / "host.json", broken_profiles=frozenset({"2g.20gb"}))
    engine, _ = make_engine(tmp_path / "state", host, scripted_policy(_resize_script))
    with capture_logs() as logs:
        results = [o.result for now in (0.0, 2.0, 4.0, 6.0)
                   for o in engine.tick(now).outcomes]
    assert results == [Result.APPLIED, Result.FAILED, Result.APPLIED]
    doc = host.state()
    assert list(doc["instances"].values()) == [{"profile": "1g.10gb", "start": 0}]
    gi = int(next(iter(doc["instances"])))
    assert doc["stopped"] == [] and doc["restarts"][-1][:2] == ["t1", gi], "tenant left down"
    assert events(logs, "mig_resize_rolled_back")
    assert len(engine.executor.journal) == 0


# -- a corrupt journal ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"{\"version\": 1, \"entries\": [", b"\x00\xff garbage",
                                     b"[1, 2, 3]", b"{\"version\": 99, \"entries\": []}",
                                     b"{\"version\": 1, \"entries\": [{\"key\": 1}]}"])
def test_corrupt_journal_is_quarantined_with_a_clear_log_line(tmp_path: Path,
                                                              content: bytes) -> None:
    (tmp_path / "journal.json").write_bytes(content)
    with capture_logs() as logs:
        j = Journal(tmp_path, wall_clock_now=1234.0)
    assert len(j) == 0
    [line] = events(logs, "journal_corrupt")
    assert line["log_level"] == "error" and line["quarantined"].endswith("corrupt-1234")
    assert (tmp_path / "journal.json.corrupt-1234").read_bytes() == content
    assert not (tmp_path / "journal.json").exists()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c,
                                                                          max_size=4),
                     max_leaves=20)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(
    st.binary(max_size=200),
    _json.map(lambda d: json.dumps(d).encode()),
    st.dictionaries(st.sampled_from(["key", "action", "status", "applied_at", "expires_at",
                                     "step", "original"]), _json, max_size=7).map(
        lambda e: json.dumps({"version": 1, "entries": [e]}).encode())))
def test_any_journal_content_loads_or_is_quarantined(tmp_path: Path, doc: bytes) -> None:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    (d / "journal.json").write_bytes(doc)
    try:
        j = Journal(d, wall_clock_now=0.0)
    except JournalError:  # the one documented refusal
        return
    assert (d / "journal.json").exists() or len(j) == 0
