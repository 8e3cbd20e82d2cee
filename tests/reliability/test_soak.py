"""A shortened soak (benchmarks/bench_soak.py runs the 24-hour, 16-GPU version): two
simulated hours of noisy-neighbor's cycle (throttles, a move, MIG resizes, releases, over and
over). The controller's state must plateau: whatever it holds after the first hour - policy
windows and sketches, levers, journal, back-offs, metrics, decision history - is no larger
than during the first hour (within a small margin)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from benchmarks.bench_soak import Sample, deep_size, growth, soak

HOURS = 2


def repeated_noisy_neighbor(hours: int) -> str:
    text = resources.files("gpuguardd.sim").joinpath(
        "scenarios/noisy-neighbor.toml").read_text("utf-8")
    head, *events = text.split("[[event]]")
    out = [head]
    for k in range(hours * 6):  # its 10-minute event cycle, again and again
        for ev in events:
            at = int(re.search(r"at_s = (\d+)", ev).group(1))  # type: ignore[union-attr]
            out.append(re.sub(r"at_s = \d+", f"at_s = {at + 600 * k}", ev))
    return "[[event]]".join(out)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    # "guards": io.max only, so the throttle cycle repeats every 10 minutes instead of ending
    # with the antagonist moved away
    return soak(repeated_noisy_neighbor(HOURS), HOURS * 3600.0, sample_s=300.0,
                policy="guards")


def test_the_controller_acts_throughout_the_soak(samples: list[Sample]) -> None:
    at_1h = max(s.actions for s in samples if s.t <= 3600)
    assert at_1h >= 4, "no action: the soak would prove nothing"
    assert samples[-1].actions >= 1.3 * at_1h, "the second hour saw no throttle cycles"


@pytest.mark.parametrize("field,slack", [("state_bytes", 1.10), ("executor_bytes", 1.0),
                                         ("journal_entries", 1.0),
                                         ("journal_file_bytes", 1.10),
                                         ("collector_bytes", 1.0)])
def test_controller_memory_plateaus_after_the_first_hour(samples: list[Sample], field: str,
                                                         slack: float) -> None:
    first_hour, later = growth(samples, field, after_s=3600.0)
    assert later <= first_hour * slack + 512, (field, first_hour, later)



def test_decision_history_is_capped(tmp_path: Path) -> None:
    """The status board keeps the last 256 decisions, however long the daemon runs."""
    from gpuguardd.model.actions import IoLimit, IoThrottle, Outcome, Result
    from gpuguardd.model.snapshot import Snapshot
    from gpuguardd.model.topology import Topology
    from gpuguardd.runtime.engine import TickReport
    from gpuguardd.runtime.executor import Executor
    from gpuguardd.runtime.journal import Journal
    from gpuguardd.runtime.status import StatusBoard
    from tests.fakes import FakeHost

    board = StatusBoard(Executor(FakeHost(), Journal(tmp_path, wall_clock_now=0.0)))
    a = IoThrottle("t2", "8:0", IoLimit(rbps=10**7), "why", 10.0)
    sizes = []
    for i in range(2000):
        board.publish(TickReport(float(i), Snapshot(float(i), Topology()), None,
                                 (Outcome(a, Result.APPLIED, "x" * 100),), 0.001))
        if i in (999, 1999):
            sizes.append(deep_size(board._decisions))
    assert len(board.status()["decisions"]) == 256
    assert sizes[1] <= sizes[0] * 1.05
