"""Carries plans out safely: journal first, read-compare-write, read back, restore.

Rules (ARCHITECTURE.md "Actions"):
1. the intent is journalled (fsync) before the host is touched, the outcome after;
2. the current value is read and written only if it differs, then read back;
3. the value found before our first write is kept, so expiry, de-escalation, SIGTERM and a
   restart after a crash restore it;
4. multi-step plans (MIG resize) are ordered steps whose progress is journalled; a plan is
   resumed, never restarted from scratch;
5. a LeverError marked permanent makes the lever unavailable for that target; a temporary one
   backs the lever off for ``retry_after_s`` (doubling up to 10 min); nothing escapes;
6. dry-run does everything but the write.

What is temporary: io throttles and MPS limits (both carry an expiry and are restored on exit).
Placements (Migrate) and MIG layouts (MigResize) are not undone on exit - that would cost the
tenants another restart - but they are journalled and re-adopted by the next start.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog

from gpuguardd.host.cgroup_io import CgroupGone
from gpuguardd.host.protocol import Host, LeverError
from gpuguardd.model.actions import (
    Action,
    IoLimit,
    IoRelease,
    IoThrottle,
    Migrate,
    MigResize,
    MpsLimit,
    Outcome,
    Result,
    VgpuSet,
)
from gpuguardd.model.snapshot import Placement, Snapshot
from gpuguardd.model.topology import MigInstance
from gpuguardd.runtime import codec
from gpuguardd.runtime.journal import Entry, Journal

log = structlog.get_logger("gpuguardd.executor")

MPS_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MAX_BACKOFF_S = 600.0


@dataclass(slots=True)
class _Backoff:
    until: float
    delay: float


@dataclass(slots=True)
class Executor:
    host: Host
    journal: Journal
    dry_run: bool = False
    _backoff: dict[str, _Backoff] = field(default_factory=dict)
    _unavailable: dict[str, str] = field(default_factory=dict)
    _dry_active: dict[str, Entry] = field(default_factory=dict)

    # -- public ---------------------------------------------------------------------------
    def active(self) -> list[Entry]:
        return list(self._dry_active.values()) if self.dry_run else self.journal.entries()

    def unavailable(self) -> dict[str, str]:
        return dict(self._unavailable)

    def apply(self, actions: Sequence[Action], now: float) -> list[Outcome]:
        return [self._guarded(a, now, partial(self._apply_one, a, now)) for a in actions]

    def expire(self, now: float) -> list[Outcome]:
        """Restore every temporary action whose expiry has passed."""
        due = [e for e in self.active() if e.expires_at is not None and e.expires_at <= now]
        return [self._guarded(e.action, now, partial(self._restore, e, "expired"),
                              lever=_restore_lever(e)) for e in due]

    def advance(self, snapshot: Snapshot) -> list[Outcome]:
        """Resume multi-step plans (MIG resize) whose GPU is no longer busy."""
        out = []
        for e in self.active():
            if isinstance(e.action, MigResize) and e.action.gpu not in snapshot.busy_gpus:
                out.append(self._guarded(e.action, snapshot.now,
                                         partial(self._mig_steps, e, snapshot.now)))
        return out

    def restore_all(self, reason: str) -> list[Outcome]:
        """On exit: lift every temporary change (throttles, MPS limits)."""
        outcomes = []
        for e in self.active():
            if e.expires_at is not None:
                # the last chance to undo it: no back-off applies
                outcomes.append(self._guarded(e.action, e.applied_at,
                                              partial(self._restore, e, reason),
                                              lever=_restore_lever(e), force=True))
        return outcomes

    def release_tenants(self, tenants: Collection[str], reason: str) -> list[Outcome]:
        """Lift the temporary changes (throttles, MPS limits) of tenants about to leave the
        configuration, while the host still knows them: afterwards nothing could undo them."""
        outcomes = []
        for e in self.active():
            if e.expires_at is not None and getattr(e.action, "tenant", None) in tenants:
                outcomes.append(self._guarded(e.action, e.applied_at,
                                              partial(self._restore, e, reason),
                                              lever=_restore_lever(e), force=True))
        return outcomes

    def recover(self, now: float) -> list[Outcome]:
        """After a (re)start: restore what expired while we were down or whose write is
        uncertain; re-adopt the rest (its expiry still holds)."""
        outcomes = []
        for e in self.journal.entries():
            if e.status == "intent" and not isinstance(e.action, MigResize):
                outcomes.append(self._guarded(e.action, now,
                                              partial(self._restore, e, "uncertain write"),
                                              lever=_restore_lever(e)))
            elif e.expires_at is not None and e.expires_at <= now:
                outcomes.append(self._guarded(e.action, now,
                                              partial(self._restore, e, "expired while down"),
                                              lever=_restore_lever(e)))
            else:
                log.info("readopted", key=e.key, action=e.action.kind, expires_at=e.expires_at)
        return outcomes

    # -- error handling ---------------------------------------------------------------------
    def _guarded(self, action: Action, now: float, fn: Callable[[], Outcome], *,
                 lever: str | None = None, force: bool = False) -> Outcome:
        """Run ``fn`` under the lever's back-off and availability. Restores use a lever of
        their own (``restore:<key>``), so a failed tightening never delays an expiry;
        ``force`` (shutdown: the last chance) ignores back-off and unavailability."""
        lever = lever or action.key
        if lever in self._unavailable and not force:
            return Outcome(action, Result.UNAVAILABLE, self._unavailable[lever])
        b = self._backoff.get(lever)
        if b is not None and now < b.until and not force:
            return Outcome(action, Result.FAILED, f"backing off until {b.until:.0f}")
        try:
            outcome = fn()
        except LeverError as e:
            if e.permanent:
                self._unavailable[lever] = str(e)
                log.error("lever_unavailable", lever=lever, error=str(e))
                return Outcome(action, Result.UNAVAILABLE, str(e))
            delay = min(MAX_BACKOFF_S, (b.delay * 2) if b else e.retry_after_s)
            self._backoff[lever] = _Backoff(now + delay, delay)
            log.warning("lever_failed", lever=lever, error=str(e), retry_in_s=delay)
            return Outcome(action, Result.FAILED, str(e))
        except Exception as e:  # OSError, or a bug in one lever: it must not stop the loop
            delay = min(MAX_BACKOFF_S, (b.delay * 2) if b else 30.0)
            self._backoff[lever] = _Backoff(now + delay, delay)
            error = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            log.warning("lever_failed", lever=lever, error=error, retry_in_s=delay,
                        exc_info=not isinstance(e, OSError))
            return Outcome(action, Result.FAILED, error)
        if outcome.result in (Result.APPLIED, Result.UNCHANGED, Result.REVERTED):
            self._backoff.pop(lever, None)
        return outcome

    # -- per kind ---------------------------------------------------------------------------
    def _apply_one(self, a: Action, now: float) -> Outcome:
        if isinstance(a, IoThrottle):
            return self._io_throttle(a, now)
        if isinstance(a, IoRelease):
            return self._release(a.key, "released: " + a.reason, a)
        if isinstance(a, MpsLimit):
            if a.pct is None:
                return self._release(a.key, "released: " + a.reason, a)
            return self._mps(a, now)
        if isinstance(a, Migrate):
            return self._migrate(a, now)
        if isinstance(a, MigResize):
            return self._mig_resize(a, now)
        if isinstance(a, VgpuSet):
            return self._vgpu(a, now)
        raise AssertionError(f"unknown action {a!r}")

    def _record(self, e: Entry) -> None:
        if self.dry_run:
            self._dry_active[e.key] = e
        else:
            self.journal.put(e)

    def _forget(self, key: str) -> None:
        if self.dry_run:
            self._dry_active.pop(key, None)
        else:
            self.journal.remove(key)

    def _entry(self, key: str) -> Entry | None:
        return self._dry_active.get(key) if self.dry_run else self.journal.get(key)

    def _io_throttle(self, a: IoThrottle, now: float) -> Outcome:
        prev = self._entry(a.key)
        current = self.host.get_io_limit(a.tenant, a.device)
        original = prev.original if prev else codec.encode_limit(current)
        self._record(Entry(a.key, a, "intent", original, now, a.expires_at))
        if current == a.limit:
            self._mark_applied(a.key)
            return Outcome(a, Result.UNCHANGED, str(current))
        if self.dry_run:
            return Outcome(a, Result.DRY_RUN, f"would set {a.limit} (now {current})")
        self.host.set_io_limit(a.tenant, a.device, a.limit)
        readback = self.host.get_io_limit(a.tenant, a.device)
        if readback != a.limit:
            raise LeverError(f"io limit read back as {readback}, wanted {a.limit}")
        self._mark_applied(a.key)
        return Outcome(a, Result.APPLIED, f"{current} -> {a.limit}")

    def _mark_applied(self, key: str) -> None:
        if not self.dry_run:
            self.journal.mark(key, status="applied")

    def _mps(self, a: MpsLimit, now: float) -> Outcome:
        prev = self._entry(a.key)
        if prev is not None and isinstance(prev.action, MpsLimit) and prev.action.pct == a.pct:
            self._record(Entry(a.key, a, prev.status, prev.original, prev.applied_at,
                               a.expires_at))
            return Outcome(a, Result.UNCHANGED, f"{MPS_ENV}={a.pct} already")
        self._record(Entry(a.key, a, "intent", None, now, a.expires_at))
        if self.dry_run:
            return Outcome(a, Result.DRY_RUN, f"would restart with {MPS_ENV}={a.pct}")
        self.host.restart_tenant(a.tenant, None, {MPS_ENV: str(a.pct)})
        self._mark_applied(a.key)
        return Outcome(a, Result.APPLIED, f"restarted with {MPS_ENV}={a.pct}")

    def _migrate(self, a: Migrate, now: float) -> Outcome:
        self._record(Entry(a.key, a, "intent", {"gpu": a.source.gpu, "gi_id": a.source.gi_id},
                           now, None))
        if self.dry_run:
            return Outcome(a, Result.DRY_RUN, f"would move {a.source} -> {a.to}")
        self.host.restart_tenant(a.tenant, a.to, {})
        self._mark_applied(a.key)
        return Outcome(a, Result.APPLIED, f"moved {a.source} -> {a.to}")

    def _vgpu(self, a: VgpuSet, now: float) -> Outcome:
        # The share and memory limit found before our first write, kept for the operator
        # (a share is not undone on exit: that would cost the tenant another restart).
        prev = self._entry(a.key)
        read = getattr(self.host, "get_vgpu", None)
        original = prev.original if prev else (read(a.tenant) if callable(read) else None)
        self._record(Entry(a.key, a, "intent", original, now, None))
        if self.dry_run:
            return Outcome(a, Result.DRY_RUN, f"would set {a.compute_pct}% {a.memory_bytes} B")
        self.host.set_vgpu(a.tenant, a.compute_pct, a.memory_bytes)
        self._mark_applied(a.key)
        return Outcome(a, Result.APPLIED, f"{a.compute_pct}% {a.memory_bytes} B")

    # MIG resize steps: 0 stop tenant, 1 destroy old GI, 2 create new GI, 3 restart tenant.
    def _mig_resize(self, a: MigResize, now: float) -> Outcome:
        if self._entry(a.key) is not None:
            return Outcome(a, Result.UNCHANGED, "resize already in progress")
        self._record(Entry(a.key, a, "intent", {"profile": a.from_profile}, now, None, step=0))
        if self.dry_run:
            self._forget(a.key)
            return Outcome(a, Result.DRY_RUN, f"would resize {a.from_profile} -> {a.to_profile}")
        e = self._entry(a.key)
        assert e is not None
        return self._mig_steps(e, now)

    def _mig_steps(self, e: Entry, now: float) -> Outcome:
        a = e.action
        assert isinstance(a, MigResize)
        step = e.step
        if step == 0:
            self.host.stop_tenant(a.tenant)
            step = 1
            self.journal.mark(e.key, step=step)
        if step == 1:
            old = self._instance(a.gpu, gi_id=a.gi_id)
            original = {"profile": a.from_profile,
                        "start": old.start if old is not None else a.start}
            self.journal.mark(e.key, original=original)
            self.host.mig_destroy(a.gpu, a.gi_id)
            step = 2
            self.journal.mark(e.key, step=step)
            return Outcome(a, Result.APPLIED, "old instance destroyed; creating the new one")
        if step == 2:
            original = dict(e.original or {"profile": a.from_profile})
            # A crash between the create and its journal mark left the instance behind:
            # adopt it instead of failing on an occupied placement for ever.
            inst = self._instance(a.gpu, profile=a.to_profile, start=a.start)
            try:
                if inst is None:
                    inst = self.host.mig_create(a.gpu, a.to_profile, a.start)
            except LeverError as err:
                if not err.permanent:
                    raise
                return self._mig_rollback(e, original, err)
            self.journal.mark(e.key, step=3, original={**original, "new_gi_id": inst.gi_id})
            return Outcome(a, Result.APPLIED, f"created {a.to_profile} gi {inst.gi_id}")
        if step == 3:
            new_gi = (e.original or {}).get("new_gi_id")
            self.host.restart_tenant(a.tenant, Placement(a.gpu, new_gi), {})
            self.journal.remove(e.key)
            profile = a.from_profile if "rolled_back" in (e.original or {}) else a.to_profile
            return Outcome(a, Result.APPLIED, f"{a.tenant} restarted on {profile}")
        return Outcome(a, Result.UNCHANGED, "")

    def _instance(self, gpu: int, *, gi_id: int | None = None, profile: str | None = None,
                  start: int | None = None) -> MigInstance | None:
        try:
            instances = self.host.topology().gpu(gpu).instances
        except KeyError:
            return None
        for i in instances:
            if ((gi_id is None or i.gi_id == gi_id) and (profile is None or i.profile == profile)
                    and (start is None or i.start == start)):
                return i
        return None

    def _mig_rollback(self, e: Entry, original: dict[str, object], err: LeverError) -> Outcome:
        """The new profile cannot be created (permanent error): put the old instance back and
        restart the tenant there (step 3), so that a failed resize never leaves it down."""
        a = e.action
        assert isinstance(a, MigResize)
        start = original.get("start", a.start)
        assert isinstance(start, int)
        inst = (self._instance(a.gpu, profile=a.from_profile, start=start)
                or self.host.mig_create(a.gpu, a.from_profile, start))
        self.journal.mark(e.key, step=3, original={**original, "new_gi_id": inst.gi_id,
                                                   "rolled_back": str(err)})
        log.error("mig_resize_rolled_back", gpu=a.gpu, tenant=a.tenant, error=str(err),
                  restored=a.from_profile, gi_id=inst.gi_id)
        return Outcome(a, Result.FAILED, f"create {a.to_profile} failed ({err}); rolled back "
                                         f"to {a.from_profile} gi {inst.gi_id}")

    # -- restore ----------------------------------------------------------------------------
    def _release(self, key: str, reason: str, action: Action) -> Outcome:
        e = self._entry(key)
        if e is None:
            return Outcome(action, Result.UNCHANGED, "nothing to release")
        return self._restore(e, reason)

    def _restore(self, e: Entry, reason: str) -> Outcome:
        a = e.action
        if self.dry_run:
            self._forget(e.key)
            return Outcome(a, Result.DRY_RUN, f"would restore ({reason})")
        if isinstance(a, IoThrottle):
            original = codec.decode_limit(e.original) if e.original is not None else IoLimit()
            try:
                current = self.host.get_io_limit(a.tenant, a.device)
            except LeverError as err:
                # The cgroup is gone (the tenant exited): nothing left to restore - a cgroup
                # created again later starts without our limit. Any other error, permanent
                # ones included, keeps the record: the limit may still be in force, and the
                # next attempt (at the latest the next start) must still lift it.
                if isinstance(err, CgroupGone):
                    self.journal.remove(e.key)
                    return Outcome(a, Result.REVERTED, f"target gone ({err})")
                raise
            if current != original:
                self.host.set_io_limit(a.tenant, a.device, original)
            self.journal.remove(e.key)
            log.info("restored", key=e.key, to=str(original), reason=reason)
            return Outcome(a, Result.REVERTED, f"{current} -> {original} ({reason})")
        if isinstance(a, MpsLimit):
            if e.status == "applied":
                self.host.restart_tenant(a.tenant, None, {})
            self.journal.remove(e.key)
            log.info("restored", key=e.key, reason=reason)
            return Outcome(a, Result.REVERTED, f"MPS limit lifted ({reason})")
        # placements and layouts stay; the record goes
        self.journal.remove(e.key)
        return Outcome(a, Result.REVERTED, reason)


def _restore_lever(e: Entry) -> str:
    return f"restore:{e.key}"
