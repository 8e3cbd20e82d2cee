"""The control loop: one ``tick(now)`` = observe -> decide -> apply -> publish.

``tick`` is the unit of behaviour and is what tests drive, with an injected clock; ``run``
only loops, sleeps and reacts to the stop/reload events that the signal handlers set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gpuguardd.config import Config
from gpuguardd.host.protocol import Host
from gpuguardd.model.actions import Action, Outcome, Result
from gpuguardd.model.snapshot import Snapshot
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.notify import Notifier, NullNotifier

log = structlog.get_logger("gpuguardd.engine")


class Decision(Protocol):
    @property
    def actions(self) -> tuple[Action, ...]: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Policy:
    """The pure decision core, as three functions (see ``gpuguardd.policy``)."""

    initial: Callable[[Config], Any]
    decide: Callable[[Any, Snapshot, Config], tuple[Any, Decision]]
    absorb: Callable[[Any, Sequence[Outcome], float], Any]


def ladder_policy() -> Policy:
    from gpuguardd import policy

    return Policy(policy.LadderState.initial, policy.decide, policy.absorb)


def policy_for(config: Config) -> Policy:
    """The ladder alone, or with the vGPU share planner when ``[vgpu] enabled`` (its numeric
    stack is imported only then)."""
    if not config.vgpu.enabled:
        return ladder_policy()
    from gpuguardd.runtime.vgpu_policy import combined_policy

    return combined_policy(config)


@dataclass(frozen=True)
class TickReport:
    """What one tick saw and did; the exporter and the status endpoint read the latest."""

    now: float
    snapshot: Snapshot
    state: Any
    outcomes: tuple[Outcome, ...]
    duration_s: float


class Publisher(Protocol):
    def publish(self, report: TickReport) -> None: ...


class Operator(Protocol):
    """Operator overrides (``gpuguardd ctl``), handled in the engine thread so that a request
    never races a tick: ``drain`` carries out queued requests, ``screen`` holds back actions
    the operator vetoed (returning an outcome for each one held)."""

    def drain(self, executor: Executor, now: float) -> list[Outcome]: ...

    def screen(self, actions: Sequence[Action],
               now: float) -> tuple[tuple[Action, ...], list[Outcome]]: ...


@dataclass
class Engine:
    host: Host
    executor: Executor
    config: Config
    policy: Policy
    publishers: Sequence[Publisher] = ()
    notifier: Notifier = field(default_factory=NullNotifier)
    operator: Operator | None = None
    state: Any = None
    ticks: int = 0
    tick_errors: int = 0
    last_report: TickReport | None = None
    _ready: bool = False
    #: outcomes of a tick that failed after expiring actions: published with the next tick
    _carried: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = self.policy.initial(self.config)

    # -- one pass -------------------------------------------------------------------------
    def tick(self, now: float) -> TickReport:
        t0 = time.perf_counter()
        # Expiry first: a throttle must end on time even when observing the host fails.
        expired = self.executor.expire(now)
        try:
            snapshot = self.host.observe(now)
        except Exception:
            for outcome in expired:
                self._log_outcome(outcome)
            self._carried += expired
            raise
        carried, self._carried = self._carried, []
        outcomes = expired
        if self.operator is not None:
            outcomes += self.operator.drain(self.executor, now)
        outcomes += self.executor.advance(snapshot)
        self.state, decision = self.policy.decide(self.state, snapshot, self.config)
        actions = decision.actions
        if self.operator is not None:
            actions, held = self.operator.screen(actions, now)
            outcomes += held
        outcomes += self.executor.apply(actions, now)
        why = {id(a): r for a, r in zip(decision.actions, decision.reasons, strict=False)}
        for outcome in outcomes:
            self._log_outcome(outcome, why.get(id(outcome.action), ""))
        outcomes = carried + outcomes
        self.state = self.policy.absorb(self.state, outcomes, now)
        report = TickReport(now, snapshot, self.state, tuple(outcomes),
                            time.perf_counter() - t0)
        self.last_report = report
        self.ticks += 1
        for p in self.publishers:
            p.publish(report)
        return report

    @staticmethod
    def _log_outcome(o: Outcome, why: str = "") -> None:
        """``why``: the decision's whole explanation (tail, cause, evidence, lever), when the
        action was decided this tick; ``reason``: the action's own summary."""
        a = o.action
        fields: dict[str, Any] = {
            "action": a.kind, "target": getattr(a, "tenant", ""), "result": o.result.value,
            "reason": getattr(a, "reason", ""), "detail": o.detail,
        }
        if why:
            fields["why"] = why
        if o.result in (Result.FAILED, Result.UNAVAILABLE):
            log.warning("decision", **fields)
        elif o.result is not Result.UNCHANGED:
            log.info("decision", **fields)

    # -- the loop -------------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        *,
        clock: Callable[[], float],
        reload: threading.Event | None = None,
        on_reload: Callable[[], None] | None = None,
        sleep_scale: float = 1.0,
        between_ticks: Callable[[], None] | None = None,
    ) -> None:
        """Tick every ``interval_s`` of ``clock`` until ``stop`` is set; restore on the way out.

        ``sleep_scale`` divides real sleeping time (a simulated clock running faster than
        real time). A tick that raises is logged and counted; the loop goes on.
        ``between_ticks`` (periodic housekeeping that decides for itself whether it is due)
        runs before each tick, outside it.
        """
        try:
            while not stop.is_set():
                started = time.monotonic()
                if reload is not None and reload.is_set():
                    reload.clear()
                    self.notifier.notify("RELOADING=1")
                    if on_reload is not None:
                        on_reload()
                    self.notifier.notify("READY=1")
                if between_ticks is not None:
                    between_ticks()
                try:
                    self.tick(clock())
                except Exception:
                    self.tick_errors += 1
                    log.exception("tick_failed")
                else:
                    if not self._ready:
                        self._ready = True
                        self.notifier.notify("READY=1")
                        log.info("ready", interval_s=self.config.daemon.interval_s)
                    self.notifier.notify("WATCHDOG=1")
                period = self.config.daemon.interval_s / sleep_scale
                stop.wait(max(0.0, period - (time.monotonic() - started)))
        finally:
            self.notifier.notify("STOPPING=1")
            self.shutdown("daemon exit")

    def shutdown(self, reason: str) -> list[Outcome]:
        outcomes = self.executor.restore_all(reason)
        for o in outcomes:
            self._log_outcome(o)
        return outcomes
