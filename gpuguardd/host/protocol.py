"""The Host protocol: what the engine may observe and which levers it may pull.

Implemented by the real host (NVML, sysfs, cgroupfs, MPS, HAMi, tenant hooks) and by the
simulator. Lever calls either succeed, raise :class:`LeverError`, or (for slow operations such
as restarts and MIG reconfiguration) start the operation and return; progress then shows up in
later snapshots (``TenantSample.running``, ``Snapshot.busy_gpus``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import Placement, Snapshot
from gpuguardd.model.topology import MigInstance, Topology


class LeverError(Exception):
    """A lever failed. ``permanent`` errors mark the lever unusable for the target; temporary
    ones are retried after ``retry_after_s``."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after_s: float = 30.0):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class Host(Protocol):
    def topology(self) -> Topology: ...

    def observe(self, now: float) -> Snapshot: ...

    # -- live levers -------------------------------------------------------------------------
    def get_io_limit(self, tenant: str, device: str) -> IoLimit: ...

    def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None: ...

    # -- restart-class levers -------------------------------------------------------------------
    def restart_tenant(
        self, tenant: str, placement: Placement | None, env: Mapping[str, str]
    ) -> None:
        """Drain and restart ``tenant``, on ``placement`` if given, with ``env`` added."""
        ...

    def stop_tenant(self, tenant: str) -> None: ...

    # -- MIG -----------------------------------------------------------------------------------
    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        """Destroy a GPU instance (and its compute instances); LeverError if in use."""
        ...

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance: ...

    # -- vGPU (HAMi) ---------------------------------------------------------------------------
    def set_vgpu(self, tenant: str, compute_pct: int, memory_bytes: int) -> None: ...

    def close(self) -> None: ...
