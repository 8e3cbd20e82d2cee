import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguardd.model.sketch import ALPHA, MAX_BUCKETS, FrozenSketch, Sketch

samples = st.lists(st.floats(min_value=1e-5, max_value=1e3, allow_nan=False), min_size=1,
                   max_size=400)


@settings(max_examples=200, deadline=None)
@given(samples, st.sampled_from([0.5, 0.9, 0.99, 0.999]))
def test_relative_accuracy_against_exact_nearest_rank(xs, q):
    exact = float(np.percentile(xs, 100 * q, method="inverted_cdf"))
    got = FrozenSketch.of(xs).quantile(q)
    assert got is not None
    assert abs(got - exact) <= ALPHA * exact * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(samples, samples)
def test_merge_equals_sketch_of_the_union(a, b):
    s = Sketch()
    s.merge(FrozenSketch.of(a))
    s.merge(FrozenSketch.of(b))
    whole = FrozenSketch.of(a + b)
    assert s.frozen().items == whole.items and s.count == len(a) + len(b)
    assert s.quantiles(0.5, 0.99) == [whole.quantile(0.5), whole.quantile(0.99)]


def test_memory_is_bounded_and_high_quantiles_survive():
    s = Sketch()
    xs = np.geomspace(1e-6, 1e6, 50_000)
    s.extend(xs.tolist())
    assert len(s.counts) <= MAX_BUCKETS
    p999 = s.quantile(0.999)
    exact = float(np.percentile(xs, 99.9, method="inverted_cdf"))
    assert p999 is not None and math.isclose(p999, exact, rel_tol=ALPHA)


def test_garbage_is_ignored_and_empty_has_no_quantile():
    s = Sketch()
    s.extend([float("nan"), float("inf"), -1.0])
    assert s.count == 0 and s.quantile(0.99) is None and FrozenSketch().mean is None


def test_histogram_bucket_deltas_land_inside_their_bucket():
    s = Sketch()
    s.add_bucket(0.01, 0.02, 10)
    s.add_bucket(10.0, math.inf, 1)
    q = s.quantile(0.5)
    assert q is not None and 0.01 < q <= 0.02 * (1 + ALPHA)
    assert s.quantile(1.0) == s.quantile(0.999)


@settings(max_examples=200, deadline=None)
@given(samples, st.floats(min_value=1e-5, max_value=1e3))
def test_count_above_agrees_with_the_quantiles(xs, x):
    sk = FrozenSketch.of(xs)
    k = sk.count_above(x)
    # the samples above x are exactly the ranks whose reported quantile exceeds x
    ranks = [r for r in range(1, sk.count + 1) if (sk.quantile((r - 0.5) / sk.count) or 0) > x]
    assert k == len(ranks)
    assert abs(k - sum(v > x for v in xs)) <= sum(abs(v - x) <= 2 * ALPHA * x for v in xs)
