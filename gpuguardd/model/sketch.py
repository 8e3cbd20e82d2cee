"""A mergeable, bounded-memory quantile sketch (DDSketch-style log buckets).

Relative accuracy ``alpha``: any reported quantile q̂ satisfies |q̂ - q| <= alpha·q for the
exact sample quantile q. Values are positive seconds; values below ``min_value`` are
clamped into the lowest bucket. Buckets are keyed by ``ceil(log_gamma(x))`` with
``gamma = (1 + alpha) / (1 - alpha)``; memory is bounded by ``max_buckets`` (the lowest
buckets are collapsed first, which only affects the low quantiles we do not alert on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ALPHA = 0.01
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
MIN_VALUE = 1e-6
MAX_BUCKETS = 2048


def _key(x: float) -> int:
    return math.ceil(math.log(max(x, MIN_VALUE)) / _LOG_GAMMA)


def _value(key: int) -> float:
    # midpoint of (gamma^(k-1), gamma^k] in the relative-error sense
    return 2 * _GAMMA**key / (1 + _GAMMA)


@dataclass(slots=True)
class Sketch:
    """Mutable while a window fills; freeze with :meth:`frozen` before it enters a snapshot."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0

    def add(self, x: float, n: int = 1) -> None:
        if not math.isfinite(x) or x < 0 or n <= 0:
            return
        k = _key(x)
        self.counts[k] = self.counts.get(k, 0) + n
        self.count += n
        self.total += x * n
        if len(self.counts) > MAX_BUCKETS:
            self._collapse()

    def extend(self, xs: Iterable[float]) -> None:
        for x in xs:
            self.add(x)

    def add_bucket(self, lower: float, upper: float, n: int) -> None:
        """Add ``n`` samples known only to lie in ``(lower, upper]`` (a histogram bucket delta).

        They are placed at the geometric midpoint; with Prometheus buckets the error is the
        bucket's own width, which is the best any consumer of that histogram can do.
        """
        if n <= 0:
            return
        if math.isinf(upper):
            x = lower
        elif lower <= 0:
            x = upper / 2
        else:
            x = math.sqrt(lower * upper)
        self.add(x, n)

    def merge(self, other: Sketch | FrozenSketch) -> None:
        counts = self.counts
        pairs = other.items if isinstance(other, FrozenSketch) else other.counts.items()
        for k, n in pairs:
            counts[k] = counts.get(k, 0) + n
        self.count += other.count
        self.total += other.total
        if len(self.counts) > MAX_BUCKETS:
            self._collapse()

    def quantile(self, q: float) -> float | None:
        return _quantiles(sorted(self.counts.items()), self.count, (q,))[0]

    def quantiles(self, *qs: float) -> list[float | None]:
        """Several quantiles in one pass over the buckets (``qs`` ascending is fastest)."""
        return _quantiles(sorted(self.counts.items()), self.count, qs)

    def frozen(self) -> FrozenSketch:
        return FrozenSketch(tuple(sorted(self.counts.items())), self.count, self.total)

    def _collapse(self) -> None:
        keys = sorted(self.counts)
        low = keys[: len(keys) - MAX_BUCKETS + 1]
        moved = sum(self.counts.pop(k) for k in low)
        target = keys[len(low)]
        self.counts[target] = self.counts.get(target, 0) + moved


@dataclass(frozen=True, slots=True)
class FrozenSketch:
    items: tuple[tuple[int, int], ...] = ()
    count: int = 0
    total: float = 0.0

    @property
    def counts(self) -> Mapping[int, int]:
        return dict(self.items)

    def quantile(self, q: float) -> float | None:
        return _quantiles(self.items, self.count, (q,))[0]

    def quantiles(self, *qs: float) -> list[float | None]:
        return _quantiles(self.items, self.count, qs)

    def count_above(self, x: float) -> int:
        """Samples whose bucket value exceeds ``x`` (within the relative accuracy)."""
        return sum(n for k, n in self.items if _value(k) > x)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @staticmethod
    def of(xs: Iterable[float]) -> FrozenSketch:
        s = Sketch()
        s.extend(xs)
        return s.frozen()


def _quantiles(
    items: Sequence[tuple[int, int]], count: int, qs: Sequence[float]
) -> list[float | None]:
    """Nearest-rank quantiles (rank ``ceil(q·n)``, like numpy's 'inverted_cdf') over buckets
    sorted by key."""
    if count <= 0 or not items:
        return [None] * len(qs)
    out: list[float | None] = []
    for q in qs:
        rank = max(1, math.ceil(min(max(q, 0.0), 1.0) * count))
        seen = 0
        value = _value(items[-1][0])
        for k, n in items:
            seen += n
            if seen >= rank:
                value = _value(k)
                break
        out.append(value)
    return out
