"""Closed loop of the ladder against the simulated host, with a tiny stand-in executor.

The real executor (journal, read-back, SIGTERM restore) lives in ``gpuguardd/runtime``; this one
only does what the policy needs to be evaluated: apply each action through the host's levers,
restore temporary actions at expiry, run a MIG resize as resumable steps (stop, destroy, create,
restart) across ticks, and report outcomes back through ``absorb``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuguardd.config import Config, PolicyConfig
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
)
from gpuguardd.model.snapshot import Placement, Snapshot
from gpuguardd.policy import Decision, LadderState, absorb, decide

MPS_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"


@dataclass
class _Resize:
    action: MigResize
    step: int = 0  # 0 stop, 1 destroy, 2 create, 3 restart
    new_gi: int | None = None


@dataclass
class MiniExecutor:
    host: Host
    expiry: dict[str, tuple[Action, float]] = field(default_factory=dict)
    mps: dict[str, int | None] = field(default_factory=dict)
    resizes: list[_Resize] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def tick(self, now: float) -> list[Outcome]:
        """Expire temporary actions and advance multi-step plans."""
        out: list[Outcome] = []
        for key, (a, until) in list(self.expiry.items()):
            if until <= now:
                del self.expiry[key]
                if isinstance(a, IoThrottle):
                    self.host.set_io_limit(a.tenant, a.device, IoLimit())
                elif isinstance(a, MpsLimit):
                    self._mps(a.tenant, None)
                out.append(Outcome(a, Result.REVERTED, "expired"))
        for job in list(self.resizes):
            self._advance(job)
        return out

    def _advance(self, job: _Resize) -> None:
        a = job.action
        try:
            while job.step < 4:
                if job.step == 0:
                    self.host.stop_tenant(a.tenant)
                elif job.step == 1:
                    self.host.mig_destroy(a.gpu, a.gi_id)
                elif job.step == 2:
                    job.new_gi = self.host.mig_create(a.gpu, a.to_profile, a.start).gi_id
                else:
                    self.host.restart_tenant(a.tenant, Placement(a.gpu, job.new_gi), {})
                job.step += 1
        except LeverError:
            return  # retried next tick from the same step: the plan is resumable
        self.resizes.remove(job)

    def _mps(self, tenant: str, pct: int | None) -> None:
        env = {MPS_ENV: str(pct)} if pct is not None else {}
        self.host.restart_tenant(tenant, None, env)
        self.mps[tenant] = pct

    def apply(self, actions: tuple[Action, ...], now: float) -> list[Outcome]:
        out: list[Outcome] = []
        for a in actions:
            try:
                result = self._apply(a)
            except LeverError as e:
                result = Result.UNAVAILABLE if e.permanent else Result.FAILED
                out.append(Outcome(a, result, str(e)))
                continue
            if result is Result.APPLIED:
                self.counts[a.kind] = self.counts.get(a.kind, 0) + 1
            out.append(Outcome(a, result))
        return out

    def _apply(self, a: Action) -> Result:
        if isinstance(a, IoThrottle):
            same = self.host.get_io_limit(a.tenant, a.device) == a.limit
            if not same:
                self.host.set_io_limit(a.tenant, a.device, a.limit)
            if a.expires_at is not None:
                self.expiry[a.key] = (a, a.expires_at)
            return Result.UNCHANGED if same else Result.APPLIED
        if isinstance(a, IoRelease):
            self.expiry.pop(a.key, None)
            self.host.set_io_limit(a.tenant, a.device, IoLimit())
            return Result.APPLIED
        if isinstance(a, MpsLimit):
            if a.pct is None:
                self.expiry.pop(a.key, None)
            elif a.expires_at is not None:
                self.expiry[a.key] = (a, a.expires_at)
            if self.mps.get(a.tenant) == a.pct:
                return Result.UNCHANGED
            self._mps(a.tenant, a.pct)
            return Result.APPLIED
        if isinstance(a, Migrate):
            self.host.restart_tenant(a.tenant, a.to, {})
            return Result.APPLIED
        if isinstance(a, MigResize):
            job = _Resize(a)
            self.resizes.append(job)
            self._advance(job)
            return Result.APPLIED
        raise LeverError(f"{a.kind} is not simulated here", permanent=True)


@dataclass
class Run:
    results: dict[str, Any]
    state: LadderState
    trace: list[tuple[float, Decision]]
    actions: dict[str, int]
    timeline: dict[str, Any]


def run(
    scenario: str,
    policy: str,
    seed: int,
    *,
    seconds: float | None = None,
    interval_s: float = 2.0,
    knobs: dict[str, Any] | None = None,
    observe: Callable[[Snapshot, LadderState], None] | None = None,
) -> Run:
    from gpuguardd.sim.scenario import load_scenario

    sc = load_scenario(scenario, seed=seed, seconds=seconds)
    host = sc.build_host()
    cfg = Config(policy=PolicyConfig(name=policy, **(knobs or {})),  # type: ignore[arg-type]
                 tenants=sc.tenant_configs())
    ex = MiniExecutor(host)
    state = LadderState.initial(cfg)
    trace: list[tuple[float, Decision]] = []
    steps = round(sc.seconds / interval_s)
    for i in range(1, steps + 1):
        now = i * interval_s
        snap = host.observe(now)
        state = absorb(state, ex.tick(now), now)
        state, d = decide(state, snap, cfg)
        state = absorb(state, ex.apply(d.actions, now), now)
        if observe is not None:
            observe(snap, state)
        if d.actions:
            trace.append((now, d))
    res = host.results()
    timeline = host.timeline() if hasattr(host, "timeline") else {}
    host.close()
    return Run(res, state, trace, dict(ex.counts), timeline)
