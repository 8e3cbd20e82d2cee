"""The escalation ladder: one pure pass per tick.

Per protected tenant (victim):

    detect   windowed p99 vs SLO -> violating / dead-band / calm / unknown; act only after
             violation_windows violating ticks whose last window is significantly above the
             1 % a p99 allows (binomial test), so a lone excursion of a few samples waits
    trial    eval_period_s after an action took effect (after the restart or move completed):
             improved (p99 <= (1 - min_improvement) x p99 at the action, or within the SLO)
             -> keep; otherwise revert it and remember it failed (lever_memory_s)
    escalate tighten an io throttle still above its floor, else diagnose and apply the cheapest
             lever that addresses the cause and has not failed recently: io.max -> MPS ->
             placement -> MIG resize. On a PCIe cause the first lever is chosen by cost: a
             restartable suspect is moved at once when the throttle that would bring the tail
             back is predicted to take more of its throughput before the stopgap than the
             restart of a move (move_outage_s). Restarting the victim itself (its move, its resize)
             waits until more of its requests missed the SLO than the outage would delay
             (ski rental, restart_outage_s)
    cure     a throttle that binds a restartable suspect for stopgap_s is replaced by moving the
             suspect off the shared link; its throttle is lifted once the move proved itself
    relax    calm (p99 < (1 - recovery_margin) x SLO) for recovery_dwell_s, dead-band windows
             holding the clock: relax the highest throttle one step or lift an MPS limit. The
             step is on trial: if the tail comes back and the suspect used its new headroom, it
             is restored and the next dwell doubles. Moves and resizes stay (undoing one costs
             another outage and recreates the conflict): they keep the level they reached.

The io.max control law, per suspect and device and direction (rates in bytes/s):

    first throttle:  cap_0     = max(floor, step x observed_rate)
    tighten:         cap_{k+1} = max(floor, step x cap_k)                 (while violating,
                                                                            once per eval period)
    relax:           cap_{k+1} = min(demand, (1 + relax_step) x cap_k)    (once per calm dwell
                                                                            and cooldown)
    release:         when cap_k reaches demand (the rate observed before the first throttle)
    dead-band:       (1 - recovery_margin) x SLO <= p99 <= SLO: hold
    step limit:      one tighten per eval_period_s, one relax per max(recovery_dwell_s, cooldown_s)

so the loop tightens geometrically (fast) and relaxes by a bounded step after sustained calm
(slowly), and never holds a cap below ``throttle_floor_bps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from gpuguardd.config import Config, PolicyConfig, TenantConfig
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
from gpuguardd.model.snapshot import Snapshot, TenantClass
from gpuguardd.policy.diagnosis import (
    MIN_SCORE,
    Diagnosis,
    Suspect,
    device_relation,
    diagnose,
    fmt_bps,
    relation,
)
from gpuguardd.policy.mig import growths
from gpuguardd.policy.placement import plan_move
from gpuguardd.policy.signals import TickRates, counters_of, rates_of, trim
from gpuguardd.policy.state import (
    LEVEL_IO,
    LEVEL_MIG,
    LEVEL_MPS,
    LEVEL_NAMES,
    LEVEL_PLACE,
    LadderState,
    Lever,
    Pending,
    TenantStatus,
    Trial,
    Victim,
)
from gpuguardd.policy.window import TailReading, Verdict, read_tail

#: levers each policy may use
POLICY_LEVELS: Mapping[str, frozenset[int]] = {
    "static": frozenset(),
    "guards": frozenset({LEVEL_IO, LEVEL_MPS}),
    "placement": frozenset({LEVEL_PLACE}),
    "mig": frozenset({LEVEL_MIG}),
    "full": frozenset({LEVEL_IO, LEVEL_MPS, LEVEL_PLACE, LEVEL_MIG}),
}

#: levers that address each cause, cheapest first. A larger MIG instance brings SMs and memory
#: slices, not PCIe bandwidth (every instance shares its GPU's link) nor host CPU: it is no
#: lever for io, pcie or host causes, however high the ladder climbs.
CAUSE_LEVELS: Mapping[str, tuple[int, ...]] = {
    "io": (LEVEL_IO, LEVEL_PLACE),
    "pcie": (LEVEL_IO, LEVEL_PLACE),
    "compute": (LEVEL_MPS, LEVEL_PLACE, LEVEL_MIG),
    "membw": (LEVEL_MPS, LEVEL_PLACE, LEVEL_MIG),
    "host": (LEVEL_PLACE,),
    "unknown": (LEVEL_MIG, LEVEL_PLACE),
}

#: a suspect's device is throttled when it carries at least this share of its block I/O
DEVICE_SHARE = 0.1
#: suspects within this fraction of the best score are throttled together
SUSPECT_BAND = 0.5
#: a trial that cannot be judged (window unknown) for this many eval periods is kept as is
TRIAL_PATIENCE = 3
#: the victim's count of requests that missed the SLO halves over this time (ski rental)
DAMAGE_HALF_LIFE_S = 3600.0
#: a throttle binds when the suspect runs at this fraction of its cap or more
BINDING = 0.7
#: a relaxed suspect used its new headroom when it ran above this multiple of its old cap
HEADROOM = 1.05
#: how much longer a restart-class lever waits before it is lifted while its target runs
RESTART_DWELL_FACTOR = 4.0
#: the longest a victim's calm dwell grows after de-escalations that had to be reverted
RELAX_BACKOFF_MAX = 8.0
#: a disruptive action not seen completed after this long no longer blocks its GPUs, seconds
PENDING_TIMEOUT_S = 300.0
#: MPS limits live this many throttle TTLs between renewals (lifting one costs a restart)
MPS_TTL_FACTOR = 4.0
#: the failed-lever memory stops doubling after this many failed trials
MAX_STRIKES = 6
UNAVAILABLE = math.inf


#: one action of a plan, the lever it puts in force, and the reason's detail
Step = tuple[Action, Lever, str]
#: (trial label, steps), or why the level cannot act
Plan = tuple[str, list[Step]] | str


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    reasons: tuple[str, ...]  # one per action


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _slo_s(tc: TenantConfig | None) -> tuple[float | None, float | None]:
    if tc is None:
        return None, None
    ttft = tc.slo.ttft_p99_ms / 1e3 if tc.slo.ttft_p99_ms is not None else None
    tpot = tc.slo.tpot_p99_ms / 1e3 if tc.slo.tpot_p99_ms is not None else None
    return ttft, tpot


def protected_names(snapshot: Snapshot, config: Config) -> frozenset[str]:
    names = {t.name for t in config.tenants if t.tenant_class == "latency"}
    names |= {t.name for t in snapshot.tenants.values() if t.tenant_class == TenantClass.LATENCY}
    return frozenset(names)


def may_restart(name: str, snapshot: Snapshot, config: Config) -> bool:
    tc = config.tenant(name)
    if tc is not None:
        return tc.may_restart
    t = snapshot.tenants.get(name)
    return t is not None and t.restartable


class _Tick:
    """Mutable working copy of the state for one pass; ``finish`` freezes the result."""

    def __init__(self, state: LadderState, snapshot: Snapshot, config: Config):
        self.s = state
        self.snap = snapshot
        self.cfg = config
        self.pc = config.policy
        self.now = snapshot.now
        self.allowed = POLICY_LEVELS[self.pc.name]
        self.protected = protected_names(snapshot, config)
        self.victims: dict[str, Victim] = dict(state.victims)
        self.levers: dict[str, Lever] = dict(state.levers)
        self.changed_at: dict[str, float] = dict(state.changed_at)
        self.blocked = {k: v for k, v in state.blocked.items() if v > self.now}
        self.mig_log = [(g, t) for g, t in state.mig_log if t > self.now - 3600.0]
        self.pending: dict[str, Pending] = dict(state.pending)
        self.actions: list[Action] = []
        self.reasons: list[str] = []
        self.readings: dict[str, TailReading] = {}
        self.history: tuple[TickRates, ...] = state.history
        self.levels_before = {v: state.level_of(v) for v in state.victims}
        self.undone: set[str] = set()  # victims whose relaxation was undone this tick
        self.placements: dict[str, str] = dict(state.placements)
        self.moved_at: dict[str, float] = dict(state.moved_at)
        self.outages: dict[str, float] = dict(state.outages)

    # -- helpers ---------------------------------------------------------------------------
    def emit(self, action: Action, reason: str) -> None:
        self.actions.append(action)
        self.reasons.append(reason)
        self.changed_at[action.key] = self.now
        self._track(action)

    def _track(self, action: Action) -> None:
        """Restarts, moves and resizes are in flight until the snapshot shows them done: they
        block their GPUs for other disruptive actions, and trials wait for them."""
        if isinstance(action, MpsLimit):
            t = self.snap.tenants.get(action.tenant)
            if t is not None and t.placement is not None:
                self.pending[action.tenant] = Pending(
                    action.tenant, frozenset({t.placement.gpu}), self.now, to=t.placement)
        elif isinstance(action, Migrate):
            self.pending[action.tenant] = Pending(
                action.tenant, frozenset({action.source.gpu, action.to.gpu}), self.now,
                to=action.to)
        elif isinstance(action, MigResize):
            self.pending[action.tenant] = Pending(
                action.tenant, frozenset({action.gpu}), self.now,
                profile=action.to_profile, start=action.start)
            self.mig_log.append((action.gpu, self.now))

    def level_of(self, victim: str) -> int:
        return max((lv.level for lv in self.levers.values() if victim in lv.owners), default=0)

    def owned(self, victim: str) -> list[Lever]:
        return sorted(
            (lv for lv in self.levers.values() if victim in lv.owners),
            key=lambda lv: (lv.level, lv.since, lv.key),
        )

    def usable(self, key: str) -> bool:
        """Not backed off after a failure, and not changed within ``cooldown_s``."""
        if key in self.blocked:
            return False
        return self.now - self.changed_at.get(key, -math.inf) >= self.pc.cooldown_s

    def rate(self, tenant: str, device: str) -> tuple[float, float]:
        """Mean (read, write) bytes/s over the last violation_windows ticks."""
        recent = self.history[-self.pc.violation_windows :]
        key = (tenant, device)
        rs = [h.io_read_bps[key] for h in recent if key in h.io_read_bps]
        ws = [h.io_write_bps[key] for h in recent if key in h.io_write_bps]
        return (sum(rs) / len(rs) if rs else 0.0, sum(ws) / len(ws) if ws else 0.0)

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> None:
        ratios: dict[str, float] = {}
        self._settle_pending()
        for sample in self.snap.tenants.values():
            where = str(sample.placement)
            if self.placements.get(sample.name, where) != where:
                self.moved_at[sample.name] = self.now
            self.placements[sample.name] = where
        for name in sorted(self.protected):
            t = self.snap.tenants.get(name)
            v = self.victims.get(name, Victim())
            if t is None:
                continue
            window = v.window.push(self.now, t.latency, self.pc.window_s)
            ttft_slo, tpot_slo = _slo_s(self.cfg.tenant(name))
            missed = t.latency.missed(ttft_slo, tpot_slo) if t.latency.ok else 0
            dt = self.now - self.s.now if math.isfinite(self.s.now) else 0.0
            if self.now < v.rent_from:
                missed = 0
            v = replace(v, damage=v.damage * 0.5 ** (max(dt, 0.0) / DAMAGE_HALF_LIFE_S) + missed)
            reading = read_tail(
                window,
                source_ok=t.latency.ok,
                ttft_slo_s=ttft_slo,
                tpot_slo_s=tpot_slo,
                min_samples=self.pc.min_samples,
                recovery_margin=self.pc.recovery_margin,
            )
            self.readings[name] = reading
            self.victims[name] = replace(v, window=window)
            if reading.ratio is not None:
                ratios[name] = reading.ratio
        rates = rates_of(self.snap, self.s.counters, ratios)
        self.history = trim((*self.s.history, rates), self.now, self.pc.diagnosis_window_s)
        self._drop_unjustified()
        for name in sorted(self.victims):
            if name not in self.snap.tenants or name not in self.protected:
                self._retire(name)
            else:
                self._step(name, self.readings[name])
        self._renew()

    def _settle_pending(self) -> None:
        for tenant, p in list(self.pending.items()):
            done = _pending_done(p, self.snap)
            late = self.now - p.issued_at > PENDING_TIMEOUT_S
            if (done or late) and p.to is not None:
                # a move or an MPS restart; one never seen completing cost at least this much
                self.outages[tenant] = self.now - p.issued_at
            if done or late:
                del self.pending[tenant]
            if tenant in self.victims:
                # ski rental: the outage was the price; what it delays (the backlog served
                # after the restart, one evaluation period) is not new rent
                self.victims[tenant] = replace(self.victims[tenant], damage=0.0,
                                               rent_from=self.now + self.pc.eval_period_s)

    def _drop_unjustified(self) -> None:
        """A throttle or MPS limit whose target no longer shares the blamed resource with its
        victim (one of them moved) protects nobody: release it."""
        for lv in list(self.levers.values()):
            if lv.level > LEVEL_MPS or lv.target in self.pending:
                continue
            for victim in sorted(lv.owners):
                if not self._shares(victim, lv):
                    why = (f"{lv.target} no longer shares the {lv.cause} path with {victim}; ")
                    self._drop_owner(lv, victim, why)
                    self._note(victim, why + f"released {LEVEL_NAMES[lv.level]} on {lv.target}")
                    lv = self.levers.get(lv.key, lv)

    def _shares(self, victim: str, lv: Lever) -> bool:
        v, t = self.snap.tenants.get(victim), self.snap.tenants.get(lv.target)
        if v is None or t is None or v.placement is None or t.placement is None:
            return True  # cannot tell: keep
        topo = self.snap.topology
        try:
            rel = relation(topo, v.placement, t.placement)
            kinds = {rel[0]} if rel else set()
            if lv.device:
                drel = device_relation(topo, v.placement, lv.device)
                if drel:
                    kinds.add(drel[0])
        except KeyError:
            return True
        needed = {"pcie": {"instance", "gpu", "switch", "root"},
                  "compute": {"instance"}, "membw": {"instance"}}.get(
            lv.cause, {"instance", "gpu", "switch", "root", "numa"})
        return bool(kinds & needed)

    def busy_gpus(self) -> frozenset[int]:
        """GPUs where a disruptive action may not start: reconfiguring, or ours in flight."""
        gpus = set(self.snap.busy_gpus)
        for p in self.pending.values():
            gpus |= p.gpus
        return frozenset(gpus)

    def _retire(self, name: str) -> None:
        """A protected tenant that left: release what was done on its behalf."""
        for lv in self.owned(name):
            self._drop_owner(lv, name, f"{name} is gone; ")
        del self.victims[name]

    def _step(self, name: str, reading: TailReading) -> None:
        v = self.victims[name]
        streak, calm_s, total = v.streak, v.calm_s, v.violations_total
        dt = self.now - self.s.now if math.isfinite(self.s.now) else 0.0
        if reading.verdict is Verdict.VIOLATING:
            streak, calm_s, total = streak + 1, 0.0, total + 1
        elif reading.verdict is Verdict.CALM:
            streak, calm_s = 0, calm_s + max(dt, 0.0)
        elif reading.verdict is Verdict.DEADBAND:
            streak = 0  # dead-band: hold, neither calm nor violating
        failed = {k: t for k, t in v.failed.items()
                  if self.now - t < self.pc.lever_memory_s * 2 ** (v.strikes.get(k, 1) - 1)}
        v = replace(v, streak=streak, calm_s=calm_s, violations_total=total, failed=failed)
        self.victims[name] = v
        if v.trial is not None:
            v = self._judge(name, v, reading)
            self.victims[name] = v
            if v.trial is not None or name in self.undone:
                return  # still on trial, or a relaxation was just undone: that is the action
        dwell_ok = self.now - v.level_since >= self.pc.level_dwell_s
        sustained = self._sustained(v, reading)
        if reading.verdict is Verdict.VIOLATING and streak >= self.pc.violation_windows:
            if not sustained:
                self._note(name, f"{self._head(name, reading)}; holding: {reading.above} of "
                                 f"{reading.samples} samples above the SLO is within the noise "
                                 "of a p99 (binomial test)")
            elif dwell_ok or self._trial_just_failed(v):
                self._escalate(name, reading)
            else:
                self._note(name, f"{self._head(name, reading)}; holding: level dwell "
                                 f"{self.pc.level_dwell_s:.0f} s")
        elif dwell_ok and reading.verdict is not Verdict.UNKNOWN and self._cure(name, reading):
            pass
        elif calm_s >= self._relax_dwell(name, v) and self.level_of(name) > 0 and dwell_ok:
            self._relax(name, reading)

    def _relax_dwell(self, name: str, v: Victim) -> float:
        """Calm time before the next relaxation step. Lifting a restart-class lever (MPS)
        restarts its target twice if the tail comes back, so while the target still runs it
        waits RESTART_DWELL_FACTOR times longer; once the target stopped, lifting is free."""
        dwell = self.pc.recovery_dwell_s * v.relax_backoff
        undoable = [lv for lv in self.owned(name) if lv.level < LEVEL_PLACE]
        if not undoable:
            return dwell
        top = max(undoable, key=lambda lv: lv.level)
        target = self.snap.tenants.get(top.target)
        if top.level == LEVEL_MPS and target is not None and target.running:
            return dwell * RESTART_DWELL_FACTOR
        return dwell

    def _cure(self, name: str, reading: TailReading) -> bool:
        """Replace a binding throttle by a move of the throttled suspect (see ``stopgap_s``).

        The throttle keeps the victim safe but costs the suspect its throughput for as long as
        the two share the link; a move off the link ends the conflict for both. Only the
        suspect moves here (the victim is within its SLO and keeps running).
        """
        if self.pc.stopgap_s <= 0 or LEVEL_PLACE not in self.allowed:
            return False
        v = self.victims[name]
        for lv in self.owned(name):
            if (lv.level != LEVEL_IO or lv.cause != "pcie"
                    or self.now - lv.since < self.pc.stopgap_s
                    or f"place {lv.target}" in v.failed
                    or not may_restart(lv.target, self.snap, self.cfg)):
                continue
            t = self.snap.tenants.get(lv.target)
            r_bps, w_bps = self.rate(lv.target, lv.device)
            bound = ((lv.cap_r_bps is not None and r_bps >= BINDING * lv.cap_r_bps)
                     or (lv.cap_w_bps is not None and w_bps >= BINDING * lv.cap_w_bps))
            if t is None or not t.running or not bound:
                continue
            suspect = Suspect(lv.target, "pcie", "disk read", "the shared link",
                              r_bps + w_bps, 1.0, None, 1.0)
            mv = plan_move(
                name, Diagnosis("pcie", (suspect,)), self.snap,
                self.history[-self.pc.violation_windows:], protected=self.protected,
                history=self.history, may_restart=_only(lv.target),
                blocked_gpus=self.busy_gpus(),
                taken={str(p.to) for p in self.pending.values() if p.to is not None},
                failed=lambda label: label in v.failed,
            )
            key = f"place:{lv.target}"
            if isinstance(mv, str) or mv.tenant != lv.target or not self.usable(key):
                continue
            held = self.now - lv.since
            head = (f"{self._head(name, reading)}; {lv.why}; io.max {lv.target} {_caps(lv)} "
                    f"has held it for {held:.0f} s at {fmt_bps(r_bps + w_bps)} of "
                    f"{fmt_bps(lv.demand_r_bps + lv.demand_w_bps)} demand")
            action = Migrate(mv.tenant, mv.source, mv.to, reason=mv.why)
            lever = Lever(key=key, level=LEVEL_PLACE, target=mv.tenant,
                          owners=frozenset({name}), since=self.now, changed_at=self.now,
                          action=action, cause="pcie")
            self._start(name, reading, LEVEL_PLACE, f"place {mv.tenant}",
                        [(action, lever, mv.why + "; then lift its throttle")], head)
            return True
        return False

    def _rental(self, name: str) -> str | None:
        """None when disrupting the victim pays off, else why not (ski rental).

        Restarting the victim (a resize or a move) delays every request of the outage:
        ``restart_outage_s x request rate``. Keep suffering (renting) until more requests
        have missed the SLO than that (the price of buying), then act: never worse than twice
        the better of the two choices in hindsight, without knowing how long the
        interference will last.
        """
        v = self.victims[name]
        ticks = v.window.ticks
        if not ticks:
            return "rate unknown"
        span = max(self.pc.window_s, 1e-9)
        rate = sum(max(tk.ttft.count, tk.tpot.count) for tk in ticks) / span
        price = self.pc.restart_outage_s * rate
        if v.damage >= price:
            return None
        return (f"{v.damage:.0f} requests missed the SLO < outage cost "
                f"{self.pc.restart_outage_s:.0f} s x {rate:.1f} rps = {price:.0f} (ski rental)")

    def _sustained(self, v: Victim, r: TailReading) -> bool:
        """Y violating windows in a row, the last one significantly above the SLO."""
        return (r.verdict is Verdict.VIOLATING and v.streak >= self.pc.violation_windows
                and r.significant(self.pc.significance))

    def _trial_just_failed(self, v: Victim) -> bool:
        return any(t == self.now for t in v.failed.values())

    def _note(self, name: str, reason: str) -> None:
        self.victims[name] = replace(self.victims[name], last_reason=reason)

    def _head(self, name: str, r: TailReading) -> str:
        v = self.victims[name]
        if r.p99_s is None or r.slo_s is None:
            return f"{name} window unknown"
        rel = ">" if r.verdict is Verdict.VIOLATING else "<="
        return (f"{name} {r.metric} p99 {ms(r.p99_s)} {rel} {r.slo_s * 1e3:g} ms"
                + (f" for {v.streak} windows" if v.streak else ""))

    # -- trial and revert ------------------------------------------------------------------
    def _judge(self, name: str, v: Victim, r: TailReading) -> Victim:
        trial = v.trial
        assert trial is not None
        if trial.kind == "relax":
            return self._judge_relax(name, v, trial, r)
        moving = {lv.target for k in trial.keys for lv in (self.levers.get(k),)
                  if lv is not None and lv.level >= LEVEL_MPS}
        if moving & set(self.pending):
            # a restart, move or resize is judged from when it completed, not when it was asked
            return replace(v, trial=replace(trial, started_at=self.now))
        if self.now < trial.started_at + self.pc.eval_period_s:
            return v
        if r.verdict is Verdict.UNKNOWN or r.p99_s is None:
            if self.now >= trial.started_at + TRIAL_PATIENCE * self.pc.eval_period_s:
                self._note(name, f"{name}: trial of {trial.label} inconclusive (window unknown); "
                                 "kept")
                return replace(self.victims[name], trial=None)
            return v
        target = (1.0 - self.pc.min_improvement) * trial.baseline_p99_s
        if r.verdict is not Verdict.VIOLATING or r.p99_s <= target:
            self._note(name, f"{name}: {trial.label} helped: {trial.metric} p99 "
                             f"{ms(trial.baseline_p99_s)} -> {ms(r.p99_s)}")
            if trial.level == LEVEL_PLACE:
                self._lift_moved(name, trial, r)
            return replace(self.victims[name], trial=None)
        why = (f"{name}: {trial.label} did not help ({trial.metric} p99 "
               f"{ms(trial.baseline_p99_s)} -> {ms(r.p99_s)}, needed <= {ms(target)}); ")
        # a joint throttle failed for each of its suspects
        labels = {trial.label} | {f"io.max {lv.target}" for k in trial.keys
                                  for lv in (self.levers.get(k),)
                                  if lv is not None and lv.level == LEVEL_IO
                                  and trial.kind == "apply"}
        self._restore(trial, why)
        failed = dict(self.victims[name].failed)
        strikes = dict(self.victims[name].strikes)
        for label in labels:
            failed[label] = self.now
            strikes[label] = min(strikes.get(label, 0) + 1, MAX_STRIKES)
        self._note(name, why + "reverted")
        return replace(self.victims[name], trial=None, failed=failed, strikes=strikes)

    def _lift_moved(self, name: str, trial: Trial, r: TailReading) -> None:
        """A suspect moved off the victim's link no longer needs the victim's throttle."""
        moved = {lv.target for k in trial.keys for lv in (self.levers.get(k),)
                 if lv is not None and lv.target != name}
        for lv in self.owned(name):
            if lv.level == LEVEL_IO and lv.target in moved:
                self._drop_owner(lv, name, f"{name} {r.metric} p99 {ms(r.p99_s or 0.0)} after "
                                           f"moving {lv.target}; ")

    def _judge_relax(self, name: str, v: Victim, trial: Trial, r: TailReading) -> Victim:
        """A de-escalation step is reverted as soon as the violation is back (Y windows)."""
        if {lv.target for lv in trial.undo} & set(self.pending):
            # lifting an MPS limit restarts the suspect: judged once it runs unlimited
            return replace(v, trial=replace(trial, started_at=self.now))
        sustained = self._sustained(v, r)
        if sustained and not self._used_headroom(trial):
            self._note(name, f"{name}: violation after {trial.label}, but no relaxed suspect "
                             "used the headroom it got: not the relaxation's doing")
            return replace(self.victims[name], trial=None)
        if sustained:
            backoff = min(v.relax_backoff * 2.0, RELAX_BACKOFF_MAX)
            why = (f"{name}: tail back after {trial.label} ({v.streak} violating windows); "
                   f"restored, next de-escalation after "
                   f"{self.pc.recovery_dwell_s * backoff:.0f} s calm; ")
            self._restore(trial, why)
            self._note(name, why.rstrip("; "))
            self.undone.add(name)
            return replace(self.victims[name], trial=None, relax_backoff=backoff)
        if self.now < trial.started_at + self.pc.eval_period_s:
            return v
        backoff = 1.0 if self.level_of(name) == 0 else v.relax_backoff
        return replace(v, trial=None, relax_backoff=backoff)

    def _used_headroom(self, trial: Trial) -> bool:
        """Did any relaxed throttle's suspect run above its old cap (or was an MPS limit or
        another lever lifted, whose effect cannot be read from a rate)?"""
        for old in trial.undo:
            if old.level != LEVEL_IO:
                return True
            r_bps, w_bps = self.rate(old.target, old.device)
            if (old.cap_r_bps is not None and r_bps > HEADROOM * old.cap_r_bps) or (
                    old.cap_w_bps is not None and w_bps > HEADROOM * old.cap_w_bps):
                return True
        return False

    def _restore(self, trial: Trial, why: str) -> None:
        """Put the trial's keys back as they were before it."""
        before = {lv.key: lv for lv in trial.undo}
        for key in trial.keys:
            cur = self.levers.get(key)
            old = before.get(key)
            if old is None:
                if cur is not None:
                    structural = isinstance(cur.action, Migrate | MigResize)
                    self._undo(cur, why + ("kept in place (undoing a move costs another "
                                           "disruption)" if structural else "revert"))
                continue
            owners = old.owners | (cur.owners if cur is not None else frozenset())
            lv = replace(old, owners=owners, changed_at=self.now)
            a = old.action
            if isinstance(a, IoThrottle):
                expires = self.now + self.pc.throttle_ttl_s
                lv = replace(lv, expires_at=expires)
                lv = replace(lv, action=_io_action(lv, expires))
                self.emit(lv.action, why + f"io.max {lv.target} {lv.device} back to {_caps(lv)}")
            elif isinstance(a, MpsLimit):
                expires = self.now + _ttl(a, self.pc)
                lv = replace(lv, expires_at=expires, action=replace(a, expires_at=expires))
                self.emit(lv.action, why + f"MPS {a.tenant} back to {a.pct}%")
            self.levers[key] = lv

    def _undo(self, lv: Lever, reason: str) -> None:
        """Remove a lever; live and restart-class levers are restored on the host."""
        del self.levers[lv.key]
        a = lv.action
        if isinstance(a, IoThrottle):
            self.emit(IoRelease(a.tenant, a.device, reason=reason), reason)
        elif isinstance(a, MpsLimit):
            self.emit(MpsLimit(a.tenant, None, reason=reason), reason)
        # a placement or a resize is a new baseline: moving back would cost another
        # disruption and recreate the conflict it removed, so it is only forgotten

    def _drop_owner(self, lv: Lever, victim: str, why: str) -> None:
        owners = lv.owners - {victim}
        if owners:
            self.levers[lv.key] = replace(lv, owners=owners)
        else:
            self._undo(lv, why + f"release {LEVEL_NAMES[lv.level]} on {lv.target}")

    # -- escalation ------------------------------------------------------------------------
    def _escalate(self, name: str, reading: TailReading) -> None:
        head = self._head(name, reading)
        v = self.victims[name]
        if LEVEL_IO in self.allowed and self._tighten(name, reading, head):
            return
        diag = diagnose(
            name,
            self.snap,
            self.history,
            protected=self.protected,
            recent=self.pc.violation_windows,
            window_s=self.pc.window_s,
            moved_at=self.moved_at,
            latent_bps={(lv.target, lv.device): lv.demand_r_bps + lv.demand_w_bps
                        for lv in self.levers.values() if lv.level == LEVEL_IO},
            recovery_bound=1.0 - self.pc.recovery_margin,
        )
        head = f"{head}; {diag.describe()}"
        first = self._move_first(name, reading, diag, v)
        if isinstance(first, tuple):
            self._start(name, reading, LEVEL_PLACE, first[0], first[1], head)
            return
        if first is not None:
            head = f"{head}; {first}"
        tried: list[str] = []
        for level in CAUSE_LEVELS[diag.cause]:
            if level not in self.allowed:
                continue
            planned = self._plan(level, name, diag, v)
            if isinstance(planned, str):
                tried.append(planned)
                continue
            label, steps = planned
            self._start(name, reading, level, label, steps, head)
            return
        detail = "; ".join(tried) if tried else f"policy {self.pc.name} has no lever for it"
        self._note(name, f"{head}; no lever: {detail}")

    def _move_first(
        self, name: str, reading: TailReading, diag: Diagnosis, v: Victim
    ) -> tuple[str, list[Step]] | str | None:
        """Move the top PCIe suspect at once when an io.max trial would cost it more.

        Returns the move, or why the throttle comes first (the costs compared), or None when
        there is nothing to compare.

        Cutting the suspect's rate to a fraction ``keep`` of what it is takes, to first order,
        ``(1 - keep) x effect`` off the victim's p99/SLO (``effect``: from the diagnosis), so
        bringing the tail to the middle of the dead band - within the SLO with room for a
        window's noise on both sides - needs ``keep <= 1 - (p99/SLO - aim) / effect``. Held until
        the stopgap replaces it by a move anyway, that throttle costs the suspect
        ``(1 - keep) x stopgap_s`` seconds of throughput; the move costs the suspect's restart:
        ``move_outage_s``, or as long as its last move or restart took when that was longer.
        When the throttle is the dearer of the two, the ladder skips it. The fitted line is
        optimistic for bursty transfers (a throttle thins bursts, it does not shorten them), so
        the rule errs towards trying the throttle, the lighter lever.
        """
        pc = self.pc
        if (diag.cause != "pcie" or pc.stopgap_s <= 0 or reading.ratio is None
                or not {LEVEL_IO, LEVEL_PLACE} <= self.allowed):
            return None
        top = next((s for s in diag.named if s.cause == "pcie"), None)
        if (top is None or top.tenant is None or top.effect is None or top.effect <= 0
                or f"io.max {top.tenant}" in v.failed
                or not may_restart(top.tenant, self.snap, self.cfg)):
            return None
        if top.fading:
            return None  # gone quiet: a throttle costs it nothing, a restart would
        aim = 1.0 - pc.recovery_margin / 2.0  # the middle of the dead band
        if reading.ratio - top.effect > aim:
            return (f"{top.tenant} accounts for {top.effect:.2f} x SLO of the tail: even "
                    f"without it p99 would stay above {aim:.0%} of the SLO")
        keep = 1.0 - (reading.ratio - aim) / top.effect
        cost = (1.0 - keep) * pc.stopgap_s
        compared = (f"io.max would have to hold {top.tenant} at <= {keep:.0%} of its rate to "
                    f"bring p99 to {aim:.0%} of the SLO (its effect {top.effect:.2f} x SLO): "
                    f"~{cost:.0f} s of its throughput within the {pc.stopgap_s:.0f} s stopgap")
        # a restart seen to take longer than configured prices the move higher; a shorter one
        # does not lower it (a host may report a tenant running before it does work again)
        seen = self.outages.get(top.tenant, 0.0)
        outage = max(seen, pc.move_outage_s)
        restart = (f"its {outage:.0f} s restart (measured)" if seen > pc.move_outage_s
                   else f"a {outage:.0f} s restart")
        if cost <= outage:
            return f"{compared} <= {restart}"
        planned = self._plan_place(name, diag, v, only=top.tenant)
        if isinstance(planned, str):
            return f"{compared} > {restart}, but {planned}"
        label, [(action, lever, detail)] = planned
        return label, [(action, lever, f"{compared} > {restart}; {detail}")]

    def _plan(
        self, level: int, victim: str, diag: Diagnosis, v: Victim
    ) -> Plan:
        """(label, [(action, lever, reason suffix)]) or why the level cannot act."""
        if level == LEVEL_IO:
            return self._plan_io(victim, diag, v)
        if level == LEVEL_MPS:
            return self._plan_mps(victim, diag, v)
        if level == LEVEL_PLACE:
            return self._plan_place(victim, diag, v)
        return self._plan_mig(victim, v)

    def _start(
        self,
        name: str,
        reading: TailReading,
        level: int,
        label: str,
        steps: list[Step],
        head: str,
    ) -> None:
        keys: list[str] = []
        for action, lever, detail in steps:
            self.emit(action, f"{head}; {detail}")
            keys.append(action.key)
            prev = self.levers.get(lever.key)
            if prev is not None:
                lever = replace(lever, owners=prev.owners | lever.owners, since=prev.since)
            self.levers[lever.key] = lever
        assert reading.p99_s is not None
        trial = Trial(label, tuple(keys), level, self.now, reading.p99_s, reading.metric)
        self.victims[name] = replace(self.victims[name], trial=trial)
        self._note(name, f"{head}; {steps[0][2]}" + (f" (+{len(steps) - 1} more)"
                                                      if len(steps) > 1 else ""))

    # -- level 1: io.max --------------------------------------------------------------------
    def _plan_io(
        self, victim: str, diag: Diagnosis, v: Victim
    ) -> Plan:
        cands = [s for s in diag.named if s.cause in ("io", "pcie") and s.tenant is not None]
        if not cands:
            return (f"io.max: no suspect with enough evidence (score >= {MIN_SCORE}) on the "
                    "disk or PCIe path")
        best = cands[0].score
        steps: list[Step] = []
        why: list[str] = []
        for s in cands:
            if s.score < SUSPECT_BAND * best:
                break
            assert s.tenant is not None
            label = f"io.max {s.tenant}"
            if label in v.failed:
                why.append(f"io.max on {s.tenant} failed its trial recently")
                continue
            t = self.snap.tenants.get(s.tenant)
            if t is None or s.tenant in self.protected:
                continue
            tc = self.cfg.tenant(s.tenant)
            devices = sorted({c.device for c in t.io})
            if tc is not None and tc.devices:
                devices = [d for d in devices if d in tc.devices]
            total = sum(sum(self.rate(s.tenant, d)) for d in devices)
            for dev in devices:
                r_bps, w_bps = self.rate(s.tenant, dev)
                if (r_bps + w_bps < DEVICE_SHARE * total
                        or max(r_bps, w_bps) < self.pc.throttle_floor_bps):
                    continue  # a minor device, or nothing a cap above the floor could cut
                key = f"io:{s.tenant}:{dev}"
                if key in self.levers or not self.usable(key):
                    why.append(f"io.max {s.tenant} {dev} in force or cooling down")
                    continue
                lever = replace(self._io_lever(victim, s.tenant, dev, r_bps, w_bps),
                                cause=s.cause, why=f"cause {s.cause} ({s.describe()})")
                steps.append((lever.action, lever,
                              f"io.max {s.tenant} {dev} {_caps(lever)} for "
                              f"{self.pc.throttle_ttl_s:.0f} s"))
        if not steps:
            return "io.max: " + ("; ".join(why) if why else "suspects do no block I/O")
        label = "io.max " + ",".join(sorted({a.tenant for a, _, _ in steps
                                             if isinstance(a, IoThrottle)}))
        return label, steps

    def _io_lever(self, victim: str, tenant: str, dev: str, r_bps: float, w_bps: float) -> Lever:
        floor, step = self.pc.throttle_floor_bps, self.pc.throttle_step
        cap_r = max(floor, int(step * r_bps)) if r_bps >= floor else None
        cap_w = max(floor, int(step * w_bps)) if w_bps >= floor else None
        expires = self.now + self.pc.throttle_ttl_s
        lever = Lever(
            key=f"io:{tenant}:{dev}", level=LEVEL_IO, target=tenant, owners=frozenset({victim}),
            since=self.now, changed_at=self.now,
            action=IoThrottle(tenant, dev, IoLimit()), device=dev,
            demand_r_bps=r_bps, demand_w_bps=w_bps, cap_r_bps=cap_r, cap_w_bps=cap_w,
            expires_at=expires,
        )
        return replace(lever, action=_io_action(lever, expires))

    def _tighten(self, name: str, reading: TailReading, head: str) -> bool:
        """Tighten this victim's throttles one step; False when none can go lower."""
        v = self.victims[name]
        label = "io.max tighten"
        if label in v.failed:
            return False
        floor, step = self.pc.throttle_floor_bps, self.pc.throttle_step
        old: list[Lever] = []
        steps: list[Step] = []
        for lv in self.owned(name):
            if lv.level != LEVEL_IO or lv.key in self.blocked:
                continue
            new_r = _lower(lv.cap_r_bps, step, floor)
            new_w = _lower(lv.cap_w_bps, step, floor)
            if new_r == lv.cap_r_bps and new_w == lv.cap_w_bps:
                continue
            expires = self.now + self.pc.throttle_ttl_s
            nl = replace(lv, cap_r_bps=new_r, cap_w_bps=new_w, changed_at=self.now,
                         expires_at=expires)
            nl = replace(nl, action=_io_action(nl, expires))
            old.append(lv)
            steps.append((nl.action, nl, f"tighten io.max {lv.target} {lv.device} "
                                         f"{_caps(lv)} -> {_caps(nl)}"))
        if not steps:
            return False
        self._start(name, reading, LEVEL_IO, label, steps, head)
        trial = self.victims[name].trial
        assert trial is not None
        self.victims[name] = replace(
            self.victims[name], trial=replace(trial, kind="tighten", undo=tuple(old))
        )
        return True

    # -- level 2: MPS ----------------------------------------------------------------------
    def _plan_mps(
        self, victim: str, diag: Diagnosis, v: Victim
    ) -> Plan:
        why: list[str] = []
        for s in diag.named:
            if s.cause not in ("compute", "membw") or s.tenant is None:
                continue
            t = self.snap.tenants.get(s.tenant)
            if t is None:
                continue
            label = f"MPS {s.tenant}"
            key = f"mps:{s.tenant}"
            if not may_restart(s.tenant, self.snap, self.cfg):
                why.append(f"{s.tenant} is not restartable")
            elif label in v.failed:
                why.append(f"MPS on {s.tenant} failed its trial recently")
            elif key in self.levers or not self.usable(key):
                why.append(f"MPS on {s.tenant} in force or cooling down")
            elif t.mps_pct is not None and t.mps_pct <= self.pc.mps_pct:
                why.append(f"{s.tenant} already at MPS {t.mps_pct}%")
            else:
                expires = self.now + MPS_TTL_FACTOR * self.pc.throttle_ttl_s
                detail = (f"MPS active threads {s.tenant} {self.pc.mps_pct}% (restart) for "
                          f"{expires - self.now:.0f} s")
                action = MpsLimit(s.tenant, self.pc.mps_pct, reason=detail, expires_at=expires)
                lever = Lever(key=key, level=LEVEL_MPS, target=s.tenant,
                              owners=frozenset({victim}), since=self.now, changed_at=self.now,
                              action=action, expires_at=expires, cause=s.cause)
                return label, [(action, lever, detail)]
        if not why:
            weak = [s for s in diag.suspects if s.cause in ("compute", "membw") and s.tenant]
            why.append(f"evidence against {weak[0].tenant} too weak to restart it (score "
                       f"{weak[0].score:.2f} < {MIN_SCORE})" if weak
                       else "no compute suspect on the victim's GPU")
        return "MPS: " + "; ".join(why)

    # -- level 3: placement ----------------------------------------------------------------
    def _plan_place(
        self, victim: str, diag: Diagnosis, v: Victim, only: str | None = None
    ) -> Plan:
        """A move that separates the victim from its suspects (of ``only``, when given)."""
        taken = {str(p.to) for p in self.pending.values() if p.to is not None}
        mv = plan_move(
            victim, diag, self.snap, self.history[-self.pc.violation_windows :],
            protected=self.protected, history=self.history,
            may_restart=(lambda n: may_restart(n, self.snap, self.cfg)) if only is None
            else lambda n: n == only and may_restart(n, self.snap, self.cfg),
            blocked_gpus=self.busy_gpus(),
            taken=taken,
            failed=lambda label: label in v.failed,
            victim_block=self._rental(victim),
        )
        if isinstance(mv, str):
            return mv
        key = f"place:{mv.tenant}"
        if not self.usable(key):
            return f"placement: {mv.tenant} moved less than {self.pc.cooldown_s:.0f} s ago"
        action = Migrate(mv.tenant, mv.source, mv.to, reason=mv.why)
        lever = Lever(key=key, level=LEVEL_PLACE, target=mv.tenant, owners=frozenset({victim}),
                      since=self.now, changed_at=self.now, action=action)
        return f"place {mv.tenant}", [(action, lever, mv.why)]

    # -- level 4: MIG resize ---------------------------------------------------------------
    def _plan_mig(self, victim: str, v: Victim) -> Plan:
        t = self.snap.tenants.get(victim)
        if t is None or t.placement is None or t.placement.gi_id is None:
            return "MIG resize: the victim is not on a MIG instance"
        gpu = self.snap.topology.gpu(t.placement.gpu)
        inst = next((i for i in gpu.instances if i.gi_id == t.placement.gi_id), None)
        if inst is None:
            return f"MIG resize: instance {t.placement} not in the topology"
        label = f"MIG resize {victim}"
        if label in v.failed:
            return f"MIG resize: growing {victim} failed its trial recently"
        rental = self._rental(victim)
        if rental is not None:
            return f"MIG resize: not yet, {rental}"
        if gpu.index in self.busy_gpus():
            return f"MIG resize: GPU {gpu.index} is busy"
        used = sum(1 for g, _ in self.mig_log if g == gpu.index)
        if used >= self.pc.mig_reconfigs_per_hour:
            return (f"MIG resize: GPU {gpu.index} used its {self.pc.mig_reconfigs_per_hour} "
                    "reconfigurations this hour")
        key = f"mig:{gpu.index}:{inst.gi_id}"
        if not self.usable(key):
            return f"MIG resize: {key} cooling down"
        options = growths(gpu, inst)
        if not options:
            return (f"MIG resize: no free slices next to {inst.profile} at {inst.start} on "
                    f"GPU {gpu.index} for a larger profile")
        g = options[0]
        detail = (f"MIG resize {victim} GPU {gpu.index} gi {inst.gi_id} {inst.profile} -> "
                  f"{g.to.name} at slice {g.start} ({used + 1}/"
                  f"{self.pc.mig_reconfigs_per_hour} this hour)")
        action = MigResize(gpu.index, inst.gi_id, victim, inst.profile, g.to.name, g.start,
                           reason=detail)
        lever = Lever(key=key, level=LEVEL_MIG, target=victim, owners=frozenset({victim}),
                      since=self.now, changed_at=self.now, action=action)
        return label, [(action, lever, detail)]

    # -- de-escalation ---------------------------------------------------------------------
    def _relax(self, name: str, reading: TailReading) -> None:
        """One step down: relax this victim's throttles one step (releasing those that reach
        the suspect's demand), else retire its highest lever. The step is itself on trial."""
        levers = [lv for lv in self.owned(name) if lv.level < LEVEL_PLACE]
        if not levers:
            return  # a move or a resize stays: it is the new baseline, not a temporary lever
        top_level = max(lv.level for lv in levers)
        v = self.victims[name]
        head = f"{self._head(name, reading)}, calm for {v.calm_s:.0f} s"
        top = [lv for lv in levers if lv.level == top_level]
        touched: list[Lever] = []
        for lv in top:
            if lv.level == LEVEL_IO and self.now - lv.changed_at < self.pc.cooldown_s:
                continue
            touched.append(lv)
            if len(lv.owners) > 1:
                self.levers[lv.key] = replace(lv, owners=lv.owners - {name})
                continue
            if lv.level == LEVEL_IO:
                new_r = _raise(lv.cap_r_bps, lv.demand_r_bps, self.pc.throttle_relax_step)
                new_w = _raise(lv.cap_w_bps, lv.demand_w_bps, self.pc.throttle_relax_step)
                if new_r is not None or new_w is not None:
                    expires = self.now + self.pc.throttle_ttl_s
                    nl = replace(lv, cap_r_bps=new_r, cap_w_bps=new_w, changed_at=self.now,
                                 expires_at=expires)
                    nl = replace(nl, action=_io_action(nl, expires))
                    self.levers[lv.key] = nl
                    self.emit(nl.action, f"{head}; relax io.max {lv.target} {lv.device} "
                                         f"{_caps(lv)} -> {_caps(nl)}")
                    continue
            self._undo(lv, f"{head}; release {LEVEL_NAMES[lv.level]} on {lv.target}")
        if not touched:
            return
        assert reading.p99_s is not None
        label = f"relax {LEVEL_NAMES[top_level]}"
        trial = Trial(label, tuple(lv.key for lv in touched), top_level, self.now,
                      reading.p99_s, reading.metric, kind="relax", undo=tuple(touched))
        self.victims[name] = replace(self.victims[name], calm_s=0.0, trial=trial)
        self._note(name, f"{head}; {label} one step")

    # -- renewals --------------------------------------------------------------------------
    def _renew(self) -> None:
        for key, lv in sorted(self.levers.items()):
            a = lv.action
            if lv.expires_at is None or lv.expires_at - self.now > _ttl(a, self.pc) / 2:
                continue
            expires = self.now + _ttl(a, self.pc)
            if isinstance(a, IoThrottle):
                na: Action = replace(a, expires_at=expires)
            elif isinstance(a, MpsLimit):
                na = replace(a, expires_at=expires)
            else:
                continue
            self.levers[key] = replace(lv, action=na, expires_at=expires)
            self.actions.append(na)
            self.reasons.append(f"renew {LEVEL_NAMES[lv.level]} {lv.target} for "
                                f"{', '.join(sorted(lv.owners))} until t={expires:.0f}")

    # -- result ----------------------------------------------------------------------------
    def finish(self) -> tuple[LadderState, Decision]:
        changes = dict(self.s.level_changes)
        total = self.s.level_changes_total
        statuses: dict[str, TenantStatus] = {}
        level_since: dict[str, float] = {}
        for name in set(self.victims) | set(self.levels_before):
            before = self.levels_before.get(name, 0)
            after = self.level_of(name)
            if after != before:
                total += 1
                changes[name] = changes.get(name, 0) + 1
                level_since[name] = self.now
        for name, v in list(self.victims.items()):
            if name in level_since:
                v = replace(v, level_since=level_since[name])
                self.victims[name] = v
        names = {t.name for t in self.cfg.tenants} | set(self.snap.tenants) | set(self.victims)
        for name in sorted(names):
            v_or_none = self.victims.get(name)
            r = self.readings.get(name)
            prev = self.s.tenants.get(name)
            if v_or_none is None or r is None:
                lvl = max((lv.level for lv in self.levers.values() if lv.target == name),
                          default=0)
                statuses[name] = TenantStatus(
                    name, 0, None, None, False, False,
                    prev.violation_windows_total if prev else 0,
                    _target_reason(name, self.levers) if lvl else "",
                )
                continue
            statuses[name] = TenantStatus(
                name, self.level_of(name), r.ttft, r.tpot, r.verdict is not Verdict.UNKNOWN,
                r.verdict is Verdict.VIOLATING, v_or_none.violations_total, v_or_none.last_reason,
            )
        state = LadderState(
            tenants=statuses,
            level_changes_total=total,
            victims=self.victims,
            levers=self.levers,
            counters=counters_of(self.snap),
            history=self.history,
            changed_at={k: t for k, t in self.changed_at.items()
                        if self.now - t < max(self.pc.cooldown_s, 1.0) or k in self.levers},
            blocked=self.blocked,
            mig_log=tuple(self.mig_log),
            pending=self.pending,
            now=self.now,
            level_changes=changes,
            placements={n: p for n, p in self.placements.items() if n in self.snap.tenants},
            moved_at={n: t for n, t in self.moved_at.items() if n in self.snap.tenants},
            outages={n: t for n, t in self.outages.items() if n in self.snap.tenants},
        )
        return state, Decision(tuple(self.actions), tuple(self.reasons))


def _sane(snapshot: Snapshot) -> Snapshot:
    """A placement on a GPU (or MIG instance) the topology does not know - a device that went
    away, a stale tenant record - is treated as unknown rather than trusted."""
    known = {g.index: {i.gi_id for i in g.instances} for g in snapshot.topology.gpus}
    bad = [t for t in snapshot.tenants.values() if t.placement is not None and (
        t.placement.gpu not in known
        or (t.placement.gi_id is not None and t.placement.gi_id not in known[t.placement.gpu]))]
    if not bad:
        return snapshot
    tenants = dict(snapshot.tenants)
    for t in bad:
        tenants[t.name] = replace(t, placement=None)
    return replace(snapshot, tenants=tenants)


def _only(name: str) -> Callable[[str], bool]:
    return lambda n: n == name


def _pending_done(p: Pending, snap: Snapshot) -> bool:
    t = snap.tenants.get(p.tenant)
    if t is None or not t.running or t.placement is None:
        return False
    if p.to is not None:
        return t.placement == p.to
    try:
        gpu = snap.topology.gpu(t.placement.gpu)
    except KeyError:
        return False
    return any(i.gi_id == t.placement.gi_id and i.profile == p.profile and i.start == p.start
               for i in gpu.instances)


def _target_reason(name: str, levers: Mapping[str, Lever]) -> str:
    on = sorted(lv.key for lv in levers.values() if lv.target == name)
    return f"{name}: acted on for others ({', '.join(on)})"


def _ttl(a: Action, pc: PolicyConfig) -> float:
    return pc.throttle_ttl_s * (MPS_TTL_FACTOR if isinstance(a, MpsLimit) else 1.0)


def _lower(cap: int | None, step: float, floor: int) -> int | None:
    if cap is None:
        return None
    return max(floor, min(cap, int(step * cap)))


def _raise(cap: int | None, demand: float, relax: float) -> int | None:
    """The next relaxed cap, or None when it reaches the demand (the throttle is no longer
    needed in that direction)."""
    if cap is None:
        return None
    new = (1.0 + relax) * cap
    return None if new >= demand else int(new)


def _caps(lv: Lever) -> str:
    parts = []
    if lv.cap_r_bps is not None:
        parts.append(f"rbps {fmt_bps(lv.cap_r_bps)}")
    if lv.cap_w_bps is not None:
        parts.append(f"wbps {fmt_bps(lv.cap_w_bps)}")
    return " ".join(parts) or "unlimited"


def _io_action(lv: Lever, expires: float) -> IoThrottle:
    return IoThrottle(
        lv.target, lv.device, IoLimit(rbps=lv.cap_r_bps, wbps=lv.cap_w_bps),
        reason=f"io.max {lv.target} {lv.device} {_caps(lv)}", expires_at=expires,
    )


def decide(state: LadderState, snapshot: Snapshot, config: Config) -> tuple[LadderState, Decision]:
    """One pass of the ladder. Pure: the same inputs give the same outputs."""
    tick = _Tick(state, _sane(snapshot), config)
    tick.run()
    return tick.finish()


def absorb(
    state: LadderState, outcomes: Sequence[Outcome], now: float, *, backoff_s: float = 60.0
) -> LadderState:
    """Feed back what the executor did.

    Applied actions start their trial's evaluation period now; a temporary failure backs the
    action's key off for ``backoff_s`` (it stays out of proposals), a permanent one marks it
    unavailable; a lever that never took effect is forgotten (a tighten or relax step that did
    not happen leaves the lever as it was) and its trial is cancelled. A throttle the executor
    reverted (expiry) is forgotten.
    """
    victims = dict(state.victims)
    levers = dict(state.levers)
    blocked = dict(state.blocked)
    pending = dict(state.pending)
    mig_log = list(state.mig_log)
    for o in outcomes:
        a, key = o.action, o.action.key
        is_undo = isinstance(a, IoRelease) or (isinstance(a, MpsLimit) and a.pct is None)
        if o.result in (Result.APPLIED, Result.UNCHANGED, Result.DRY_RUN):
            for name, v in victims.items():
                if v.trial is not None and key in v.trial.keys and not is_undo:
                    victims[name] = replace(v, trial=replace(v.trial, started_at=max(
                        v.trial.started_at, now)))
            if isinstance(a, Migrate | MigResize) and a.tenant in pending:
                pending[a.tenant] = replace(pending[a.tenant], issued_at=now)
        elif o.result in (Result.FAILED, Result.UNAVAILABLE):
            if is_undo:
                continue  # the executor restores at expiry; nothing in force changes here
            blocked[key] = now + backoff_s if o.result is Result.FAILED else UNAVAILABLE
            lv = levers.get(key)
            if lv is not None and lv.since >= state.now:
                del levers[key]
            for name, v in victims.items():
                if v.trial is None or key not in v.trial.keys:
                    continue
                # a step that did not happen: the host still has what was there before it
                for old in v.trial.undo:
                    if old.key == key and key in levers:
                        levers[key] = replace(old, owners=levers[key].owners)
                victims[name] = replace(
                    v, trial=None,
                    last_reason=f"{v.last_reason}; {a.kind} {key} {o.result.value}: "
                                f"{o.detail}".strip())
            if isinstance(a, Migrate | MigResize | MpsLimit):
                pending.pop(a.tenant, None)
            if isinstance(a, MigResize):
                for i in range(len(mig_log) - 1, -1, -1):
                    if mig_log[i][0] == a.gpu:
                        del mig_log[i]
                        break
        elif o.result is Result.REVERTED and key in levers and not is_undo:
            del levers[key]
    return replace(state, victims=victims, levers=levers, blocked=blocked, pending=pending,
                   mig_log=tuple(mig_log))
