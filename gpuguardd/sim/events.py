"""The simulator's event loop: a heap of (time, sequence, callback) in virtual seconds.

The sequence number breaks ties in insertion order, which keeps runs deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Callback = Callable[[float], None]


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callback]] = []
        self._seq = 0
        self.processed = 0

    def schedule(self, t: float, fn: Callback) -> None:
        if t < self.now:
            t = self.now
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def run_until(self, t_end: float) -> None:
        """Run every event due at or before ``t_end``; afterwards ``now == t_end``."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= t_end:
            t, _, fn = pop(heap)
            self.now = t
            fn(t)
            n += 1
        self.processed += n
        if t_end > self.now:
            self.now = t_end
