"""Actions are data. The policy returns them; the executor journals, applies and undoes them.

Every action names its target, carries a human-readable ``reason`` with the numbers that caused
it, and - when temporary - an absolute ``expires_at`` (seconds on the engine's clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from gpuguardd.model.snapshot import Placement


class Cost(StrEnum):
    LIVE = "live"  # applies at once, no downtime
    RESTART = "restart"  # applies when the tenant restarts
    RECONFIGURE = "reconfigure"  # MIG reconfiguration of a GPU


@dataclass(frozen=True, slots=True)
class IoLimit:
    """cgroup I/O limits on one device; ``None`` = unlimited (``max``)."""

    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.rbps is None and self.wbps is None and self.riops is None and self.wiops is None

    def __str__(self) -> str:
        parts = [
            f"{k}={'max' if v is None else v}"
            for k, v in (
                ("rbps", self.rbps),
                ("wbps", self.wbps),
                ("riops", self.riops),
                ("wiops", self.wiops),
            )
        ]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class IoThrottle:
    tenant: str
    device: str  # "MAJ:MIN"
    limit: IoLimit
    reason: str = ""
    expires_at: float | None = None
    kind: Literal["io_throttle"] = field(default="io_throttle", init=False)
    cost: Cost = field(default=Cost.LIVE, init=False)

    @property
    def key(self) -> str:
        return f"io:{self.tenant}:{self.device}"


@dataclass(frozen=True, slots=True)
class IoRelease:
    tenant: str
    device: str
    reason: str = ""
    kind: Literal["io_release"] = field(default="io_release", init=False)
    cost: Cost = field(default=Cost.LIVE, init=False)

    @property
    def key(self) -> str:
        return f"io:{self.tenant}:{self.device}"


@dataclass(frozen=True, slots=True)
class MpsLimit:
    """MPS active-thread percentage; ``pct`` None lifts it. Takes effect through a restart."""

    tenant: str
    pct: int | None
    reason: str = ""
    expires_at: float | None = None
    kind: Literal["mps_limit"] = field(default="mps_limit", init=False)
    cost: Cost = field(default=Cost.RESTART, init=False)

    @property
    def key(self) -> str:
        return f"mps:{self.tenant}"


@dataclass(frozen=True, slots=True)
class Migrate:
    """Drain ``tenant``, restart it on ``to`` (a GPU or a MIG instance)."""

    tenant: str
    source: Placement
    to: Placement
    reason: str = ""
    kind: Literal["migrate"] = field(default="migrate", init=False)
    cost: Cost = field(default=Cost.RESTART, init=False)

    @property
    def key(self) -> str:
        return f"place:{self.tenant}"


@dataclass(frozen=True, slots=True)
class MigResize:
    """Replace GPU instance ``gi_id`` (profile ``from_profile``) by ``to_profile`` at ``start``.

    The executor runs it as ordered, resumable steps: drain the tenant, destroy, create,
    restart the tenant on the new instance. It never destroys an instance still in use by
    anyone but ``tenant``.
    """

    gpu: int
    gi_id: int
    tenant: str
    from_profile: str
    to_profile: str
    start: int
    reason: str = ""
    kind: Literal["mig_resize"] = field(default="mig_resize", init=False)
    cost: Cost = field(default=Cost.RECONFIGURE, init=False)

    @property
    def key(self) -> str:
        return f"mig:{self.gpu}:{self.gi_id}"


@dataclass(frozen=True, slots=True)
class VgpuSet:
    tenant: str
    compute_pct: int
    memory_bytes: int
    reason: str = ""
    kind: Literal["vgpu_set"] = field(default="vgpu_set", init=False)
    cost: Cost = field(default=Cost.RESTART, init=False)

    @property
    def key(self) -> str:
        return f"vgpu:{self.tenant}"


Action = IoThrottle | IoRelease | MpsLimit | Migrate | MigResize | VgpuSet

ACTION_KINDS: tuple[str, ...] = (
    "io_throttle",
    "io_release",
    "mps_limit",
    "migrate",
    "mig_resize",
    "vgpu_set",
)


class Result(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"  # the value was already in place
    DRY_RUN = "dry_run"
    FAILED = "failed"  # temporary: will be retried after a back-off
    UNAVAILABLE = "unavailable"  # permanent: the lever is marked unusable
    REVERTED = "reverted"


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    result: Result
    detail: str = ""
