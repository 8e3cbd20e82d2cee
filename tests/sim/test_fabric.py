"""Processor sharing with weights and caps: the physics every shared resource uses."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguardd.sim.events import EventLoop
from gpuguardd.sim.fabric import INF, Flow, FluidDomain, max_min, share

CAP = st.one_of(st.just(INF), st.floats(0.0, 50.0))
WEIGHT = st.floats(0.1, 10.0)
flows_st = st.lists(st.tuples(WEIGHT, CAP), min_size=1, max_size=12)


def _single(capacity: float, flows: list[tuple[float, float]]) -> list[float]:
    return max_min([(0,)] * len(flows), [capacity], [w for w, _ in flows], [c for _, c in flows])


@given(st.floats(0.0, 100.0), flows_st)
def test_shares_never_exceed_capacity_and_caps_are_honoured(
    capacity: float, flows: list[tuple[float, float]]
) -> None:
    for rates in (_single(capacity, flows),
                  list(share(capacity, [w for w, _ in flows], [c for _, c in flows]))):
        assert sum(rates) <= capacity * (1 + 1e-9) + 1e-9
        for r, (_, cap) in zip(rates, flows, strict=True):
            assert 0.0 <= r <= cap * (1 + 1e-9) + 1e-12


@given(st.floats(0.1, 100.0), flows_st)
def test_water_filling_is_max_min_fair_and_work_conserving(
    capacity: float, flows: list[tuple[float, float]]
) -> None:
    rates = _single(capacity, flows)
    uncapped = [i for i, (r, (_, c)) in enumerate(zip(rates, flows, strict=True))
                if r < c * (1 - 1e-9)]
    if uncapped:
        # somebody wants more: the link is full, and nobody gets more per weight than them
        assert sum(rates) >= capacity * (1 - 1e-9)
        level = min(rates[i] / flows[i][0] for i in uncapped)
        for r, (w, _) in zip(rates, flows, strict=True):
            assert r / w <= level * (1 + 1e-9) + 1e-12
    # the vectorised form agrees with the general one
    np.testing.assert_allclose(
        share(capacity, [w for w, _ in flows], [c for _, c in flows]), rates,
        rtol=1e-9, atol=1e-9)


def test_formula_b_i_equals_min_cap_and_weighted_share() -> None:
    # B = 12.5: the capped flow takes 1, the other two split 11.5 by weight 1:4
    rates = _single(12.5, [(1.0, 1.0), (1.0, INF), (4.0, INF)])
    np.testing.assert_allclose(rates, [1.0, 2.3, 9.2])


@given(st.floats(0.1, 100.0), flows_st, WEIGHT, CAP)
def test_adding_a_competing_flow_never_speeds_up_another(
    capacity: float, flows: list[tuple[float, float]], w: float, c: float
) -> None:
    before = _single(capacity, flows)
    after = _single(capacity, [*flows, (w, c)])
    for b, a in zip(before, after[: len(before)], strict=True):
        assert a <= b * (1 + 1e-9) + 1e-12


# A PCIe tree as the simulator builds it: links 0..k-1 are GPU links, link k the switch uplink;
# every flow crosses its GPU's link and the uplink.
tree_st = st.tuples(
    st.lists(st.floats(1.0, 50.0), min_size=1, max_size=4),  # GPU link capacities
    st.floats(1.0, 50.0),  # uplink
    st.lists(st.tuples(st.integers(0, 3), WEIGHT, CAP), min_size=1, max_size=10),
)


def _tree(links: list[float], uplink: float, flows: list[tuple[int, float, float]],
          ) -> tuple[list[tuple[int, ...]], list[float], list[float], list[float]]:
    k = len(links)
    paths: list[tuple[int, ...]] = [(g % k, k) for g, _, _ in flows]
    return paths, [*links, uplink], [w for _, w, _ in flows], [c for _, _, c in flows]


@given(tree_st)
def test_multi_link_shares_respect_every_link(tree: tuple[list[float], float,
                                                           list[tuple[int, float, float]]]) -> None:
    paths, caps_l, weights, caps = _tree(*tree)
    rates = max_min(paths, caps_l, weights, caps)
    for link, cap in enumerate(caps_l):
        assert sum(r for r, p in zip(rates, paths, strict=True) if link in p) <= cap * (1 + 1e-9)
    for i, r in enumerate(rates):
        assert r <= caps[i] * (1 + 1e-9) + 1e-12
        if r < caps[i] * (1 - 1e-9):
            # bottleneck property: some link of its path is full and it is among the
            # largest (per weight) flows on that link
            full = [lk for lk in paths[i]
                    if sum(rates[j] for j, p in enumerate(paths) if lk in p)
                    >= caps_l[lk] * (1 - 1e-9)]
            assert any(
                all(rates[j] / weights[j] <= r / weights[i] * (1 + 1e-9) + 1e-12
                    for j, p in enumerate(paths) if lk in p)
                for lk in full)


@given(tree_st, st.integers(0, 3), WEIGHT)
def test_adding_a_flow_in_a_switch_tree_never_speeds_up_another(
    tree: tuple[list[float], float, list[tuple[int, float, float]]], gpu: int, w: float
) -> None:
    links, uplink, flows = tree
    before = max_min(*_tree(links, uplink, flows))
    after = max_min(*_tree(links, uplink, [*flows, (gpu, w, INF)]))
    for b, a in zip(before, after[: len(before)], strict=True):
        assert a <= b * (1 + 1e-9) + 1e-9


def _finish_time(capacity: float, size: float, others: list[tuple[float, float, float]]) -> float:
    """When a ``size`` flow started at 0 finishes next to ``others`` (start, size, weight)."""
    loop = EventLoop()
    dom = FluidDomain([capacity], loop.schedule)
    done: list[float] = []

    def starter(size: float, weight: float) -> Callable[[float], None]:
        def start(t: float) -> None:
            dom.add(t, Flow((0,), size, weight))
        return start

    for start, osize, weight in others:
        loop.schedule(start, starter(osize, weight))
    dom.add(0.0, Flow((0,), size, 1.0, on_done=done.append))
    loop.run_until(1e6)
    return done[0]


@settings(max_examples=60)
@given(st.floats(1.0, 20.0), st.floats(0.1, 10.0),
       st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 10.0), WEIGHT), max_size=5),
       st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 10.0), WEIGHT))
def test_latency_is_monotone_in_competing_load(
    capacity: float, size: float, others: list[tuple[float, float, float]],
    extra: tuple[float, float, float],
) -> None:
    alone = _finish_time(capacity, size, [])
    assert math.isclose(alone, size / capacity, rel_tol=1e-9)
    base = _finish_time(capacity, size, others)
    more = _finish_time(capacity, size, [*others, extra])
    assert alone <= base * (1 + 1e-9)
    assert base <= more * (1 + 1e-9)


def test_fluid_domain_books_bytes_and_follows_cap_changes() -> None:
    loop = EventLoop()
    dom = FluidDomain([10.0], loop.schedule)
    ends: list[float] = []
    a = dom.add(0.0, Flow((0,), 100.0, 1.0, account=7, on_done=ends.append))
    loop.run_until(2.0)
    dom.set_cap(2.0, a, 5.0)  # 20 moved, 80 left at 5/s
    loop.run_until(100.0)
    assert ends == [18.0]
    assert dom.booked[7] == 100.0
