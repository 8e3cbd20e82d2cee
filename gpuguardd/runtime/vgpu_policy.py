"""The ladder and the vGPU share planner as one engine Policy (``[vgpu] enabled = true``).

Imported only when vGPU is enabled. The planner evaluates its model and the predictors in
pure Python (``vgpu/scalar.py``, precomputed built-in predictors): numpy and scipy stay out of
the daemon with vGPU on too (tests/test_footprint.py), unless a tenant's ``model_config`` is
not a built-in architecture and its predictor has to be fitted at start. Files the config
names (predictors JSON, model ``config.json``) are read here, once, when the policy is built;
the planner itself is pure.

Per tick: the ladder decides first; the vGPU step then plans every vGPU tenant the ladder does
not act on this tick (one restarting lever per tenant per tick). ``absorb`` hands each side the
outcomes of its own actions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpuguardd import policy as ladder
from gpuguardd.config import Config, ConfigError
from gpuguardd.host import hami
from gpuguardd.model.actions import Action, Outcome, VgpuSet
from gpuguardd.model.snapshot import Snapshot
from gpuguardd.runtime.engine import Policy
from gpuguardd.vgpu import daemon as vgpu
from gpuguardd.vgpu.predictor import PredictorError, predictors_from_json


@dataclass(frozen=True, slots=True)
class CombinedDecision:
    actions: tuple[Action, ...]
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CombinedState:
    ladder: ladder.LadderState
    vgpu: vgpu.VgpuState
    config: Config

    # the exporter and /status read these from any policy state
    @property
    def tenants(self) -> Any:
        return self.ladder.tenants

    @property
    def level_changes_total(self) -> int:
        return self.ladder.level_changes_total

    @property
    def vgpu_shares(self) -> dict[str, int]:
        return {n: v.share_pct for n, v in self.vgpu.view(
            self.config.vgpu.demand_window_s).items() if v.share_pct is not None}

    def vgpu_status(self) -> dict[str, Any]:
        """Per tenant: share, memory limit, demand, last reason, and the Kubernetes patch an
        operator applies to make the share survive a pod re-creation."""
        tenants: dict[str, Any] = {}
        for name, v in self.vgpu.view(self.config.vgpu.demand_window_s).items():
            entry: dict[str, Any] = {
                "share_pct": v.share_pct, "memory_bytes": v.memory_bytes, "gpu": v.gpu,
                "demand_rps": None if v.demand_rps is None else round(v.demand_rps, 3),
                "last_change_at": v.last_change_at, "last_reason": v.last_reason,
            }
            t = self.config.tenant(name)
            tv = t.vgpu if t is not None else None
            if (tv is not None and tv.k8s_owner is not None and tv.k8s_namespace is not None
                    and tv.container is not None and v.share_pct is not None):
                kind, _, owner = tv.k8s_owner.partition("/")
                entry["k8s_patch"] = hami.k8s_patch_plan(
                    namespace=tv.k8s_namespace, owner_kind=kind, owner_name=owner,
                    container=tv.container, container_index=tv.k8s_container_index,
                    share_pct=v.share_pct, memory_bytes=v.memory_bytes)
            tenants[name] = entry
        return {"tenants": tenants, "total_share_pct": vgpu.total_share_pct(self.vgpu),
                "restarts_last_hour": len(self.vgpu.replan.restarts),
                "notes": list(self.vgpu.notes)}


def load_inputs(config: Config) -> vgpu.Inputs:
    """Read the predictors and model configs the config names; errors name key paths."""
    errors: list[str] = []
    preds = {}
    if config.vgpu.predictors is not None:
        path = config.vgpu.predictors
        try:
            preds = predictors_from_json(json.loads(Path(path).read_text("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, PredictorError) as e:
            errors.append(f"vgpu.predictors: {path}: {e}")
    models: dict[str, Any] = {}
    for i, t in enumerate(config.tenants):
        if t.vgpu is None or t.vgpu.model_config is None:
            continue
        try:
            data = json.loads(Path(t.vgpu.model_config).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            errors.append(f"tenant[{i}].vgpu.model_config: {e}")
            continue
        if not isinstance(data, dict):
            errors.append(f"tenant[{i}].vgpu.model_config: not a JSON object")
            continue
        models[t.name] = data
    if errors:
        raise ConfigError(errors)
    return vgpu.Inputs(preds, models)


def combined_policy(config: Config) -> Policy:
    inputs = load_inputs(config)

    def initial(cfg: Config) -> CombinedState:
        return CombinedState(ladder.LadderState.initial(cfg), vgpu.initial(cfg, inputs), cfg)

    def decide(state: CombinedState, snapshot: Snapshot,
               cfg: Config) -> tuple[CombinedState, CombinedDecision]:
        ls, d = ladder.decide(state.ladder, snapshot, cfg)
        if not cfg.vgpu.enabled:  # switched off by a reload: the ladder alone from now on
            return replace(state, ladder=ls, config=cfg), CombinedDecision(
                tuple(d.actions), tuple(d.reasons))
        busy = frozenset(str(getattr(a, "tenant", "")) for a in d.actions)
        vs, acts, _ = vgpu.step(state.vgpu, snapshot, cfg, hold=busy)
        # one reason per action (the planner's notes stay in its state, shown in /status)
        return (replace(state, ladder=ls, vgpu=vs, config=cfg),
                CombinedDecision(tuple(d.actions) + acts,
                                 tuple(d.reasons) + tuple(a.reason for a in acts)))

    def absorb(state: CombinedState, outcomes: Sequence[Outcome], now: float) -> CombinedState:
        mine = [o for o in outcomes if isinstance(o.action, VgpuSet)]
        theirs = [o for o in outcomes if not isinstance(o.action, VgpuSet)]
        return replace(state, ladder=ladder.absorb(state.ladder, theirs, now),
                       vgpu=vgpu.absorb(state.vgpu, mine, now))

    return Policy(initial, decide, absorb)
