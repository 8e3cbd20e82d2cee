"""Diagnosis, table by table: which neighbour and which channel get the blame, and which never."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuguardd.model.snapshot import Placement, Snapshot, TenantClass, TenantSample
from gpuguardd.model.topology import MigInstance
from gpuguardd.policy.diagnosis import Diagnosis, diagnose, pearson
from gpuguardd.policy.signals import TickRates

from .fakes import NVME, p4d

L, B = TenantClass.LATENCY, TenantClass.BATCH


def _snap(tenants: dict[str, tuple[TenantClass, Placement | None, bool]],
          mig: dict[int, tuple[MigInstance, ...]] | None = None) -> Snapshot:
    from gpuguardd.model.snapshot import IoCounters

    return Snapshot(
        now=200.0, topology=p4d(mig),
        tenants={n: TenantSample(n, c, True, p, io=(IoCounters(NVME),) if io else ())
                 for n, (c, p, io) in tenants.items()},
    )


def _history(signals: Callable[[bool], dict[str, object]], victim: str = "t1",
             n: int = 60) -> list[TickRates]:
    """Ticks every 2 s; the antagonist is on in alternating 10-tick blocks; the victim's
    p99/SLO is 1.6 when on and 0.7 when off."""
    out = []
    for i in range(n):
        on = ((n - 1 - i) // 10) % 2 == 0  # the last block (now) is on
        kw = signals(on)
        out.append(TickRates(at=2.0 * i + 2, ratio={victim: 1.6 if on else 0.7}, **kw))  # type: ignore[arg-type]
    return out


def _diag(snap: Snapshot, hist: list[TickRates], protected: frozenset[str] = frozenset({"t1"})
          ) -> Diagnosis:
    return diagnose("t1", snap, hist, protected=protected, recent=3, window_s=0.1)


@pytest.mark.parametrize(
    ("where", "signals", "cause", "suspect"),
    [
        # ETL on the GPU behind the victim's switch, its disk reads rise and fall with the tail
        (Placement(1), lambda on: {"io_read_bps": {("t2", NVME): 3e9 if on else 0.0},
                                   "pcie_bps": {1: 3e9 if on else 0.0}}, "pcie", "t2"),
        # ETL on another MIG instance of the victim's GPU: its PCIe (GPM) bytes
        (Placement(0, 2), lambda on: {"inst_pcie_bps": {(0, 2): 4e9 if on else 1e6}},
         "pcie", "t2"),
        # co-runner on the same non-MIG GPU: SM activity of the shared pool
        (Placement(0), lambda on: {"sm": {0: 0.95 if on else 0.3}}, "compute", "t2"),
        # on another NUMA node and another switch: nothing shared, nobody blamed
        (Placement(6), lambda on: {"pcie_bps": {6: 3e9 if on else 0.0},
                                   "sm": {6: 0.9}}, "unknown", None),
        # IRQ storm on the victim's NUMA node, no tenant to blame
        (Placement(6), lambda on: {"irq_numa": {0: 50_000.0 if on else 5_000.0}},
         "host", None),
    ],
)
def test_cause_and_suspect(
    where: Placement, signals: Callable[[bool], dict[str, object]], cause: str,
    suspect: str | None,
) -> None:
    mig = None
    victim_at = Placement(0)
    if where.gi_id is not None:
        mig = {0: (MigInstance(0, 1, "1g.5gb", 0, 1, "a"), MigInstance(0, 2, "3g.20gb", 4, 4, "b"))}
        victim_at = Placement(0, 1)
    has_io = "io_read_bps" in signals(True)
    snap = _snap({"t1": (L, victim_at, False), "t2": (B, where, has_io)}, mig)
    d = _diag(snap, _history(signals))
    assert d.cause == cause
    named = [s.tenant for s in d.named]
    assert (named[0] if named else None) == suspect
    if suspect is not None:
        top = d.named[0]
        assert top.r is not None and top.r > 0.9
        assert f"r={top.r:.2f} with {suspect}" in d.describe()


def test_a_protected_neighbour_is_never_a_suspect_but_its_load_still_explains_the_tail() -> None:
    snap = _snap({"t1": (L, Placement(0), False), "t4": (L, Placement(1), True)})
    hist = _history(lambda on: {"io_read_bps": {("t4", NVME): 3e9 if on else 0.0},
                                "pcie_bps": {1: 3e9 if on else 0.0}})
    d = _diag(snap, hist, protected=frozenset({"t1", "t4"}))
    assert not d.named
    assert d.cause == "pcie" and d.suspects[0].tenant is None  # anonymous switch load


def test_history_before_a_move_is_not_evidence() -> None:
    snap = _snap({"t1": (L, Placement(0), False), "t2": (B, Placement(1), True)})
    hist = _history(lambda on: {"io_read_bps": {("t2", NVME): 3e9 if on else 0.0}})
    before = diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3, window_s=0.1)
    after = diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3, window_s=0.1,
                     moved_at={"t2": hist[-3].at})
    assert before.named[0].r is not None
    assert not after.named or after.named[0].r is None


def test_a_flow_high_while_the_victim_is_calm_is_not_blamed() -> None:
    snap = _snap({"t1": (L, Placement(0), False), "t2": (B, Placement(1), True)})
    hist = _history(lambda on: {"io_read_bps": {("t2", NVME): 0.0 if on else 3e9},
                                "pcie_bps": {1: 0.0 if on else 3e9}})
    assert not _diag(snap, hist).named


def test_a_throttled_suspect_keeps_its_latent_pressure() -> None:
    snap = _snap({"t1": (L, Placement(0), False), "t2": (B, Placement(1), True)})
    hist = [TickRates(at=2.0 * i + 2, ratio={"t1": 1.3},
                      io_read_bps={("t2", NVME): 2e8}) for i in range(10)]
    plain = diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3, window_s=0.1)
    latent = diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3, window_s=0.1,
                      latent_bps={("t2", NVME): 3e9})
    assert not plain.named  # 200 MB/s of a 12.5 GB/s link, no correlation: noise
    assert latent.named and latent.named[0].tenant == "t2"


@pytest.mark.parametrize(
    ("xs", "ys", "r"),
    [
        ([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], 1.0),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0),
        ([1, 1, 1, 1, 1], [1, 2, 3, 4, 5], None),  # constant signal: undefined, not 0
        ([1, 2, 3], [1, 2, 3], None),  # too few points
    ],
)
def test_pearson(xs: list[float], ys: list[float], r: float | None) -> None:
    got = pearson(xs, ys)
    assert (got is None) == (r is None)
    if r is not None and got is not None:
        assert got == pytest.approx(r)


def test_a_neighbour_that_just_went_quiet_still_explains_the_window_it_filled() -> None:
    """The victim's p99 is read over window_s; the ETL stopped two ticks ago. Its recent mean
    is 0, but it filled most of the window the tail comes from: still the suspect, not an
    unexplained tail (which would point at resizing the victim)."""
    snap = _snap({"t1": (L, Placement(0, 1), False), "t2": (B, Placement(0, 2), True)})
    hist = [TickRates(at=2.0 * i + 2, ratio={"t1": 0.7 if i < 30 else 1.4 if i < 58 else 1.3},
                      io_read_bps={("t2", NVME): 2.5e9 if 30 <= i < 58 else 0.0})
            for i in range(60)]
    d = diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3, window_s=10.0)
    assert d.cause == "pcie" and d.named and d.named[0].tenant == "t2", d.describe()
    # a window later the tail no longer holds the ETL's samples: nothing named
    hist += [TickRates(at=2.0 * i + 2, ratio={"t1": 1.2}, io_read_bps={("t2", NVME): 0.0})
             for i in range(60, 66)]
    assert not diagnose("t1", snap, hist, protected=frozenset({"t1"}), recent=3,
                        window_s=10.0).named


@pytest.mark.parametrize(
    ("explained", "quiet", "now_ratio", "effect"),
    [
        (None, 0.7, 1.5, None),  # no correlation: no fitted effect
        (0.6, None, 1.5, None),  # never quiet: nothing bounds the fitted line
        (1.6, 0.7, 1.5, 0.8),  # an onset's steep slope, bounded by the quiet level
        (0.5, 0.7, 1.5, 0.5),  # the line below that bound
        (0.5, 1.6, 1.5, 0.0),  # the tail was higher while it was quiet: no effect
    ],
)
def test_a_suspects_effect_is_bounded_by_the_tail_without_it(
    explained: float | None, quiet: float | None, now_ratio: float, effect: float | None
) -> None:
    from gpuguardd.policy.diagnosis import _effect, _Evidence

    c = _Evidence(1e9, 0.1, 0.9, explained, quiet, 1e9)
    got = _effect(c, now_ratio)
    assert got == (pytest.approx(effect) if effect is not None else None)
