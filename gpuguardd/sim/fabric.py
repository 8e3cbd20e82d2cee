"""Processor sharing with weights and caps (max-min fair, water-filling).

Every shared resource of the simulated host - a PCIe link, a switch uplink, an NVMe device, the
SMs of a GPU or instance shared by MPS/time-slicing, HBM bandwidth - is a server of capacity B.
A flow i with weight w_i and cap c_i gets

    b_i = min(c_i, w_i · λ)   with λ chosen so that Σ b_i = B (or every flow is capped),

i.e. b_i = min(cap_i, w_i·B/Σw_j) with the capacity left unused by capped flows redistributed
(max-min). A flow may cross several links (a GPU's own link and its switch uplink); then
progressive filling raises λ for all unfrozen flows together, freezing the flows of a link the
moment it saturates, or a flow the moment it hits its cap.

:func:`share` is the vectorised single-resource form (numpy, for large pools); :func:`max_min`
the general multi-link form, written for the handful of flows that share one PCIe subtree, where
plain Python beats numpy's per-call overhead. :class:`FluidDomain` runs flows of a given byte
size over time, recomputing rates whenever the set of flows or a cap changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

INF = math.inf
#: a flow this close to done (bytes, or one nanosecond at its rate) is done: float residue
_EPS_BYTES = 1e-3

FloatArray = npt.NDArray[np.float64]


def share(capacity: float, weights: Sequence[float] | FloatArray,
          caps: Sequence[float] | FloatArray | None = None) -> FloatArray:
    """Water-filling of one resource: b_i = min(cap_i, w_i·λ), Σ b_i ≤ capacity.

    Flows with weight 0 get 0. Sorting by cap/weight makes it O(n log n): walk the flows in
    order of the level λ at which they saturate; each capped flow returns its unused share.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    c = np.full(n, INF) if caps is None else np.asarray(caps, dtype=np.float64)
    if n == 0:
        return np.zeros(0)
    if capacity < 0 or np.any(w < 0) or np.any(c < 0):
        raise ValueError("capacity, weights and caps must be non-negative")
    out = np.zeros(n)
    active = w > 0
    if not np.any(active):
        return out
    wa, ca = w[active], c[active]
    level = ca / wa  # λ at which each flow hits its cap
    order = np.argsort(level, kind="stable")
    lv, ws, cs = level[order], wa[order], ca[order]
    # Before flow k saturates, flows k.. share what flows ..k-1 (capped) left over.
    capped_sum = np.concatenate(([0.0], np.cumsum(cs)[:-1]))
    w_rest = np.cumsum(ws[::-1])[::-1]
    lam_k = (capacity - capped_sum) / w_rest  # λ if flows k.. were all uncapped
    saturating = lv >= lam_k  # flow k (and all after it) bottleneck on the link
    if np.any(saturating):
        k = int(np.argmax(saturating))
        lam = lam_k[k]
        res = np.where(np.arange(len(ws)) < k, cs, ws * lam)
    else:
        res = cs
    alloc = np.empty_like(res)
    alloc[order] = res
    out[active] = alloc
    return out


def max_min(
    paths: Sequence[Sequence[int]],
    capacities: Sequence[float],
    weights: Sequence[float],
    caps: Sequence[float],
) -> list[float]:
    """Weighted max-min rates of flows crossing several links (progressive filling).

    ``paths[i]`` lists the link indices flow i crosses. A flow with an empty path is limited
    only by its cap. Returns one rate per flow; Σ rates on a link never exceeds its capacity.
    """
    n = len(paths)
    if n == 1:  # the common case: one flow alone on its links
        if weights[0] <= 0:
            return [0.0]
        return [min([caps[0], *(max(capacities[link], 0.0) for link in paths[0])])
                if paths[0] or caps[0] < INF else INF]
    rates = [0.0] * n
    left = list(capacities)
    todo = [i for i in range(n) if weights[i] > 0 and caps[i] > 0]
    while todo:
        # λ at which each link saturates given the unfrozen flows crossing it
        wsum: dict[int, float] = {}
        for i in todo:
            for link in paths[i]:
                wsum[link] = wsum.get(link, 0.0) + weights[i]
        lam = INF
        for link, ws in wsum.items():
            lam = min(lam, max(left[link], 0.0) / ws)
        for i in todo:
            lam = min(lam, caps[i] / weights[i])
        if lam == INF:  # uncapped flows on no link: nothing bounds them
            for i in todo:
                rates[i] = INF
            break
        full = {link for link, ws in wsum.items() if max(left[link], 0.0) / ws <= lam * (1 + 1e-12)}
        frozen: list[int] = []
        rest: list[int] = []
        for i in todo:
            if caps[i] / weights[i] <= lam * (1 + 1e-12):
                rates[i] = caps[i]
                frozen.append(i)
            elif any(link in full for link in paths[i]):
                rates[i] = weights[i] * lam
                frozen.append(i)
            else:
                rest.append(i)
        for i in frozen:
            for link in paths[i]:
                left[link] -= rates[i]
        todo = rest
    return rates


@dataclass(slots=True, eq=False)
class Flow:
    """``remaining`` bytes to move over ``path`` (link indices of its domain)."""

    path: tuple[int, ...]
    remaining: float
    weight: float = 1.0
    cap: float = INF
    on_done: Callable[[float], None] | None = None
    #: where the moved bytes are booked (e.g. the GPU index for PCIe counters)
    account: int = -1
    rate: float = 0.0
    moved: float = 0.0
    domain: FluidDomain | None = None


Scheduler = Callable[[float, Callable[[float], None]], None]


@dataclass(slots=True, eq=False)
class FluidDomain:
    """Flows sharing a set of links, advanced in virtual time.

    ``schedule(t, fn)`` asks the event loop to call ``fn(t)`` at time ``t``. The domain keeps
    one pending completion check; a version counter voids checks made stale by a change.
    """

    capacities: list[float]
    schedule: Scheduler
    flows: list[Flow] = field(default_factory=list)
    now: float = 0.0
    version: int = 0
    #: bytes moved so far per account (cumulative counters)
    booked: dict[int, float] = field(default_factory=dict)
    #: while callbacks run inside a completion, changes wait for one re-share at the end
    deferred: bool = False

    def advance(self, t: float) -> None:
        dt = t - self.now
        if dt <= 0:
            return
        for f in self.flows:
            if f.rate > 0:
                moved = min(f.rate * dt, f.remaining)
                f.remaining -= moved
                f.moved += moved
                self.booked[f.account] = self.booked.get(f.account, 0.0) + moved
        self.now = t

    def add(self, t: float, flow: Flow) -> Flow:
        self.advance(t)
        flow.domain = self
        self.flows.append(flow)
        self._reshare()
        return flow

    def remove(self, t: float, flow: Flow) -> None:
        self.advance(t)
        if flow in self.flows:
            self.flows.remove(flow)
            flow.domain = None
            self._reshare()

    def set_cap(self, t: float, flow: Flow, cap: float) -> None:
        self.advance(t)
        flow.cap = cap
        self._reshare()

    def _reshare(self) -> None:
        if self.deferred:
            return
        fl = self.flows
        if len(fl) == 1:  # alone: its cap or its narrowest link
            f = fl[0]
            r = f.cap
            for link in f.path:
                r = min(r, self.capacities[link])
            f.rate = r if f.weight > 0 else 0.0
        elif fl:
            rates = max_min([f.path for f in fl], self.capacities, [f.weight for f in fl],
                            [f.cap for f in fl])
            for f, r in zip(fl, rates, strict=True):
                f.rate = r
        self.version += 1
        nxt = INF
        for f in fl:
            if f.rate > 0:
                nxt = min(nxt, f.remaining / f.rate)
        if nxt < INF:
            v = self.version
            self.schedule(self.now + nxt, lambda t: self._check(t, v))

    def _check(self, t: float, version: int) -> None:
        if version != self.version:
            return
        self.advance(t)
        done = [f for f in self.flows if f.remaining <= _EPS_BYTES or f.remaining <= f.rate * 1e-9]
        if not done:
            self._reshare()
            return
        for f in done:
            self.flows.remove(f)
            f.remaining = 0.0
            f.domain = None
        # completions usually start the owner's next flow: share once for all of it
        self.deferred = True
        try:
            for f in done:
                if f.on_done is not None:
                    f.on_done(t)
        finally:
            self.deferred = False
        self._reshare()
