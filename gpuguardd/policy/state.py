"""The ladder's frozen state: what it knows between ticks. Pure data, rebuilt every tick."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpuguardd.config import Config
from gpuguardd.model.actions import Action
from gpuguardd.model.snapshot import Placement
from gpuguardd.policy.signals import Counters, TickRates
from gpuguardd.policy.window import Quantiles, TailWindow

LEVEL_IO = 1
LEVEL_MPS = 2
LEVEL_PLACE = 3
LEVEL_MIG = 4

LEVEL_NAMES = {0: "none", 1: "io.max", 2: "MPS", 3: "placement", 4: "MIG resize"}


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """What the exporter shows for one tenant."""

    name: str
    level: int  # 0 = no action; 1 io.max; 2 MPS; 3 placement; 4 MIG resize
    ttft: Quantiles | None
    tpot: Quantiles | None
    window_ok: bool
    violating: bool
    violation_windows_total: int  # monotone counter of violating windows
    last_reason: str


@dataclass(frozen=True, slots=True)
class Lever:
    """An action in force (or, for placement/resize, done) on behalf of some victims.

    ``key`` is the action key (one lever per key). io levers remember the suspect's rates before
    the first throttle (``demand_*``): relaxation stops there and the throttle is released.
    """

    key: str
    level: int
    target: str  # the tenant acted on
    owners: frozenset[str]
    since: float
    changed_at: float
    action: Action  # the last issued action (renewals re-issue it with a later expiry)
    device: str = ""
    demand_r_bps: float = 0.0
    demand_w_bps: float = 0.0
    cap_r_bps: int | None = None
    cap_w_bps: int | None = None
    expires_at: float | None = None
    #: the diagnosed cause the lever answered ("pcie", "io", "compute", ...) and its evidence
    cause: str = ""
    why: str = ""


@dataclass(frozen=True, slots=True)
class Trial:
    """An action on probation: judged ``eval_period_s`` after it was applied."""

    label: str  # lever identity for the failed-lever memory ("io:t2", "tighten:t2", ...)
    keys: tuple[str, ...]
    level: int
    started_at: float
    baseline_p99_s: float
    metric: str
    #: "apply" a new lever, "tighten" a throttle, "relax" one step down (de-escalation)
    kind: str = "apply"
    #: the states of ``keys`` before the step (keys absent here did not exist): restored when
    #: the step did not help (apply, tighten) or the tail came back (relax)
    undo: tuple[Lever, ...] = ()


@dataclass(frozen=True, slots=True)
class Victim:
    """Per protected tenant: tail window, violation/recovery counters, trial in progress."""

    window: TailWindow = field(default_factory=TailWindow)
    streak: int = 0
    violations_total: int = 0
    #: seconds of calm windows since the last violation (dead-band and unknown windows hold it)
    calm_s: float = 0.0
    level_since: float = float("-inf")
    trial: Trial | None = None
    #: lever label -> when its trial last failed (forgotten after its memory, see ``strikes``)
    failed: Mapping[str, float] = field(default_factory=dict)
    #: lever label -> failed trials so far: the memory doubles with each (lever_memory_s x 2^k)
    strikes: Mapping[str, int] = field(default_factory=dict)
    last_reason: str = ""
    #: multiplies recovery_dwell_s; doubled each time a de-escalation had to be reverted
    relax_backoff: float = 1.0
    #: requests that missed the SLO, decaying with a half-life of DAMAGE_HALF_LIFE_S
    damage: float = 0.0
    #: no damage accrues before this time (the backlog after the victim's own restart)
    rent_from: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Pending:
    """A disruptive action in progress (one per GPU at a time).

    Done when the tenant runs again at ``to`` (a move) or on ``gpu`` in an instance of
    ``profile`` starting at ``start`` (a MIG resize).
    """

    tenant: str
    gpus: frozenset[int]
    issued_at: float
    to: Placement | None = None
    profile: str | None = None
    start: int | None = None


@dataclass(frozen=True)
class LadderState:
    tenants: Mapping[str, TenantStatus] = field(default_factory=dict)
    level_changes_total: int = 0
    victims: Mapping[str, Victim] = field(default_factory=dict)
    levers: Mapping[str, Lever] = field(default_factory=dict)
    counters: Counters | None = None
    history: tuple[TickRates, ...] = ()
    #: action key -> last time it changed (cooldown)
    changed_at: Mapping[str, float] = field(default_factory=dict)
    #: action key -> time until which it must not be proposed (failed: back-off; unavailable: inf)
    blocked: Mapping[str, float] = field(default_factory=dict)
    #: (gpu, time) of every MIG reconfiguration in the last hour
    mig_log: tuple[tuple[int, float], ...] = ()
    pending: Mapping[str, Pending] = field(default_factory=dict)
    now: float = float("-inf")
    #: per tenant, count of level changes (for the per-hour flapping check)
    level_changes: Mapping[str, int] = field(default_factory=dict)
    #: tenant -> its placement last tick, and when that placement last changed
    placements: Mapping[str, str] = field(default_factory=dict)
    moved_at: Mapping[str, float] = field(default_factory=dict)
    #: tenant -> how long its last move or restart took, seconds (issued to running again)
    outages: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def initial(config: Config) -> LadderState:
        statuses = {
            t.name: TenantStatus(t.name, 0, None, None, False, False, 0, "")
            for t in config.tenants
        }
        return LadderState(tenants=statuses)

    def level_of(self, victim: str) -> int:
        return max((lv.level for lv in self.levers.values() if victim in lv.owners), default=0)
