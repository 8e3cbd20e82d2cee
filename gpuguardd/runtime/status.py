"""The daemon's status for operators: tenants, levels, active actions, recent decisions."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, is_dataclass
from typing import Any

from gpuguardd.model.actions import Result
from gpuguardd.runtime import codec
from gpuguardd.runtime.engine import TickReport
from gpuguardd.runtime.executor import Executor


class StatusBoard:
    """Keeps the last tick and a bounded history of decisions (not UNCHANGED ones)."""

    def __init__(self, executor: Executor, history: int = 256):
        self._executor = executor
        self._lock = threading.Lock()
        self._report: TickReport | None = None
        self._decisions: deque[dict[str, Any]] = deque(maxlen=history)

    def publish(self, report: TickReport) -> None:
        with self._lock:
            self._report = report
            for o in report.outcomes:
                if o.result is Result.UNCHANGED:
                    continue
                self._decisions.append({
                    "at": report.now,
                    "action": codec.encode(o.action),
                    "result": o.result.value,
                    "detail": o.detail,
                })

    def status(self) -> dict[str, Any]:
        with self._lock:
            report, decisions = self._report, list(self._decisions)
        tenants: dict[str, Any] = {}
        if report is not None:
            for name, st in getattr(report.state, "tenants", {}).items():
                tenants[name] = asdict(st) if is_dataclass(st) and not isinstance(st, type) else st
        vgpu = getattr(report.state, "vgpu_status", None) if report is not None else None
        out = {
            "now": report.now if report else None,
            "tenants": tenants,
            "active_actions": [
                {"key": e.key, "action": codec.encode(e.action), "status": e.status,
                 "applied_at": e.applied_at, "expires_at": e.expires_at,
                 "reason": getattr(e.action, "reason", "")}
                for e in self._executor.active()
            ],
            "unavailable_levers": self._executor.unavailable(),
            "decisions": decisions,
        }
        if callable(vgpu):  # shares, demand, reasons and Kubernetes patch plans
            out["vgpu"] = vgpu()
        return out

    def explain(self, tenant: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self._decisions if d["action"].get("tenant") == tenant]
