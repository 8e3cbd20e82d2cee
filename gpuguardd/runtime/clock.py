"""Clocks. The engine never reads time itself; it is handed ``now``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class WallClock:
    """Real time (seconds since the epoch), so journal expiries survive a restart."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class ScaledClock:
    """Simulated time running ``speed`` times faster than real time, starting at 0."""

    speed: float = 1.0
    _t0: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed
