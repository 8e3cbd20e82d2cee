"""Random faults on the simulated host under the real ladder: every lever call and one in
twenty observations may fail (temporary, permanent, OSError, or a plain bug), for ten
simulated minutes of noisy-neighbor. The loop keeps ticking, failures show in metrics and
logs, and once the faults stop the daemon's exit leaves no tenant throttled or limited."""

from __future__ import annotations

import errno
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpuguardd.evaluate.run import sim_config
from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.runtime.engine import ladder_policy
from gpuguardd.sim.scenario import load_scenario
from tests.reliability.helpers import events, make_engine, metric

LEVERS = ("get_io_limit", "set_io_limit", "restart_tenant", "stop_tenant", "mig_destroy",
          "mig_create")


class ChaosHost:
    def __init__(self, inner: Any, seed: int, p_lever: float = 0.3,
                 p_observe: float = 0.05) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.p_lever = p_lever
        self.p_observe = p_observe
        self.on = True
        self.injected: dict[str, int] = {}

    def _fault(self) -> BaseException:
        return self.rng.choice([
            LeverError("injected: busy", retry_after_s=5.0),
            LeverError("injected: not supported", permanent=True),
            OSError(errno.EIO, "injected I/O error"),
            RuntimeError("injected bug"),
        ])

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        p = self.p_lever if name in LEVERS else self.p_observe if name == "observe" else 0.0
        if not p:
            return target

        def call(*args: Any, **kw: Any) -> Any:
            if self.on and self.rng.random() < p:
                self.injected[name] = self.injected.get(name, 0) + 1
                raise self._fault()
            return target(*args, **kw)

        return call


@pytest.mark.parametrize("seed", [1, 2])
def test_random_faults_never_stop_the_loop_and_leave_nothing_limited(tmp_path: Path,
                                                                      seed: int) -> None:
    scenario = load_scenario("noisy-neighbor", seconds=600)
    cfg = sim_config(scenario, "full")
    # a restart priced above any throttle keeps the ladder on its throttles, whose many host
    # calls (read, write, read back, restore) are what the faults are for; the move comes later
    cfg = replace(cfg, policy=replace(cfg.policy, move_outage_s=1000.0))
    sim = scenario.build_host()
    host = ChaosHost(sim, seed)
    engine, collector = make_engine(tmp_path, host, ladder_policy(), cfg, durable=False)
    completed = failed_ticks = 0
    with capture_logs() as logs:
        now = 0.0
        while now <= 600.0:
            try:
                engine.tick(now)
                completed += 1
            except Exception:  # what Engine.run does: count, log, go on
                engine.tick_errors += 1
                failed_ticks += 1
            now += cfg.daemon.interval_s
        host.on = False
        engine.shutdown("SIGTERM")
    assert completed + failed_ticks == 301 and completed > 250
    assert failed_ticks == host.injected.get("observe", 0)
    assert sum(v for k, v in host.injected.items() if k != "observe") > 0, "no lever fault"
    failed = sum(metric(collector, "gpuguard_actions_total", kind=k, result=r)
                 for k in ("io_throttle", "io_release", "mps_limit", "migrate", "mig_resize")
                 for r in ("failed", "unavailable"))
    assert failed > 0 and events(logs, "lever_failed") + events(logs, "lever_unavailable")
    # nothing temporary survives the exit: no io limit on any tenant, no MPS limit in force
    assert [e.key for e in engine.executor.active() if e.expires_at is not None] == []
    for t in sim.tenants.values():
        assert all(lim == IoLimit() for lim in t.io_limits.values()), (t.name, t.io_limits)
