"""Shared pieces for the reliability tests: a fault-injecting Host wrapper, a scripted policy,
and an engine wired to the real collector so that tests read the metrics an operator sees."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuguardd.config import Config
from gpuguardd.export.metrics import GpuguardCollector, make_registry
from gpuguardd.model.actions import Action, Outcome
from gpuguardd.model.snapshot import Snapshot
from gpuguardd.runtime.engine import Engine, Policy
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal

Fault = Callable[[], None]


@dataclass
class FaultyHost:
    """Wraps any Host; ``faults[method]`` is a list of exceptions raised by the next calls of
    ``method`` (one each), or ``always[method]`` an exception raised on every call."""

    inner: Any
    faults: dict[str, list[BaseException]] = field(default_factory=dict)
    always: dict[str, BaseException] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kw: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.always:
                raise self.always[name]
            pending = self.faults.get(name)
            if pending:
                raise pending.pop(0)
            return target(*args, **kw)

        return call


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    reasons: tuple[str, ...] = ()


def scripted_policy(script: Callable[[Snapshot], Sequence[Action]]) -> Policy:
    """A policy whose decisions are ``script(snapshot)``; state counts the ticks."""

    def decide(state: Any, snap: Snapshot, cfg: Config) -> tuple[Any, Plan]:
        acts = tuple(script(snap))
        return state + 1, Plan(acts, tuple(getattr(a, "reason", "") for a in acts))

    def absorb(state: Any, outcomes: Sequence[Outcome], now: float) -> Any:
        return state

    return Policy(lambda cfg: 0, decide, absorb)


def make_engine(state_dir: Path, host: Any, policy: Policy, cfg: Config | None = None,
                *, durable: bool = True) -> tuple[Engine, GpuguardCollector]:
    cfg = cfg or Config()
    executor = Executor(host, Journal(state_dir, wall_clock_now=0.0, durable=durable))
    holder: dict[str, Engine] = {}

    def extra() -> Mapping[str, Any]:
        eng = holder["engine"]
        return {"tick_errors": eng.tick_errors,
                "unavailable": list(eng.executor.unavailable()),
                "active_actions": {}}

    collector = GpuguardCollector(lambda: cfg, extra)
    engine = Engine(host, executor, cfg, policy, publishers=(collector,))
    holder["engine"] = engine
    return engine, collector


def samples(collector: GpuguardCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every exposed sample, as an operator's scrape would parse it."""
    text = generate_latest(make_registry(collector)).decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(collector: GpuguardCollector, name: str, **labels: str) -> float:
    return samples(collector).get((name, frozenset(labels.items())), 0.0)


def events(logs: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("event") == name]
