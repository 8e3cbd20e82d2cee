"""``gpuguardd run``: the long-running daemon, on the real or the simulated host."""

from __future__ import annotations

import collections
import dataclasses
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from gpuguardd import config as configmod
from gpuguardd.app import discovery
from gpuguardd.config import Config
from gpuguardd.export.control import ControlApi, ControlServer, OperatorQueue
from gpuguardd.export.http import MetricsServer
from gpuguardd.export.metrics import GpuguardCollector, make_registry
from gpuguardd.host.protocol import Host
from gpuguardd.model.actions import Result
from gpuguardd.runtime.clock import ScaledClock, WallClock
from gpuguardd.runtime.engine import Engine, policy_for
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.journal import Journal, JournalError
from gpuguardd.runtime.notify import from_environment
from gpuguardd.runtime.status import StatusBoard

log = structlog.get_logger("gpuguardd")


class StartupError(Exception):
    """A problem that prevents the daemon from starting; the message is for the operator."""


@dataclasses.dataclass
class Daemon:
    config: Config
    host: Host
    engine: Engine
    server: MetricsServer
    board: StatusBoard
    clock: Callable[[], float]
    sleep_scale: float
    config_path: str | None
    scenario_tenants: tuple[configmod.TenantConfig, ...] | None
    reloads: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    control: ControlServer | None = None
    #: the configuration as the file gives it, before discovered tenants are added
    base: Config | None = None
    discovered: tuple[configmod.TenantConfig, ...] = ()
    next_discovery: float = 0.0

    def reload(self) -> None:
        new = self._load_file()
        source = self.config_path if new is not None else "kubernetes only"
        if new is None:
            if not self._discovering(self.config):
                return
            new = self.base if self.base is not None else self.config  # rediscover only
        else:
            self.base = new
        if self._discovering(new):
            self._rediscover(new)
        else:
            self.discovered = ()  # [kubernetes] turned off: only the file's tenants remain
        if new.vgpu.enabled and not self.config.vgpu.enabled:
            log.warning("vgpu_needs_restart", detail="[vgpu] enabled takes effect at the next "
                        "start; bands, cooldown and budget apply on reload")
        self._swap(discovery.merged(new, self.discovered))
        log.info("config_reloaded", path=source, tenants=len(self.config.tenants))

    def _load_file(self) -> Config | None:
        if self.config_path is None or not Path(self.config_path).exists():
            log.warning("config_reload_skipped", reason="no configuration file")
            self.reloads["skipped"] += 1
            return None
        try:
            new = configmod.load(self.config_path, trusted_only=True)
        except configmod.ConfigError as e:
            self.reloads["failed"] += 1
            log.error("config_reload_failed", path=self.config_path, errors=e.errors,
                      kept="previous configuration")
            return None
        self.reloads["ok"] += 1
        return _effective(new, self.config, self.scenario_tenants)

    def _discovering(self, cfg: Config) -> bool:
        return cfg.kubernetes.enabled and self.scenario_tenants is None

    def _rediscover(self, cfg: Config) -> bool:
        """Ask Kubernetes again; on failure keep the tenants discovered before. True if the
        discovered tenants changed."""
        self.next_discovery = time.monotonic() + cfg.kubernetes.refresh_s
        try:
            found = discovery.discover_tenants(cfg)
        except discovery.TenantDiscoveryError as e:
            self.reloads["discovery_failed"] += 1
            log.warning("tenant_discovery_failed", error=str(e),
                        kept=[t.name for t in self.discovered])
            return False
        changed = found != self.discovered
        self.discovered = found
        return changed

    def refresh(self) -> None:
        """Between ticks: rediscover the Kubernetes tenants every ``refresh_s`` and apply a
        change like a reload. Never raises (it runs in the engine loop)."""
        base = self.base if self.base is not None else self.config
        if not self._discovering(base) or time.monotonic() < self.next_discovery:
            return
        try:
            before = {t.name for t in self.discovered}
            changed = self._rediscover(base)
            target = discovery.merged(base, self.discovered)
            # unchanged, a tenant kept by the last swap (its throttle not lifted) is retried
            if changed or target.tenants != self.config.tenants:
                self._swap(target)
                after = {t.name for t in self.discovered}
                log.info("tenants_rediscovered", added=sorted(after - before),
                         removed=sorted(before - after), tenants=len(self.config.tenants))
        except Exception:  # a bug here must not stop the loop
            log.exception("tenant_refresh_failed")

    def _swap(self, new: Config) -> None:
        """Apply ``new`` atomically (host first, then the engine). Tenants that leave have
        their temporary changes lifted first, while the host still knows their cgroups; a
        tenant whose change cannot be lifted now stays configured until it can."""
        names = {t.name for t in new.tenants}
        leaving = {t.name for t in self.config.tenants} - names
        stuck: set[str] = set()
        if leaving:
            for o in self.engine.executor.release_tenants(leaving, "tenant removed"):
                if o.result not in (Result.REVERTED, Result.UNCHANGED, Result.DRY_RUN):
                    stuck.add(getattr(o.action, "tenant", ""))
        if stuck:
            kept = tuple(t for t in self.config.tenants if t.name in stuck)
            log.warning("tenant_kept", tenants=sorted(stuck),
                        reason="its temporary changes could not be lifted yet; retried at "
                               "the next reload or discovery")
            new = dataclasses.replace(new, tenants=new.tenants + kept)
        reconfigure = getattr(self.host, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(new)
        self.engine.config = new
        self.config = new

    def run(self, stop: threading.Event, reload: threading.Event) -> None:
        self.server.start()
        if self.control is not None:
            self.control.start()
        log.info("started", backend=self.config.daemon.backend, listen=self.server.address,
                 tenants=[t.name for t in self.config.tenants], policy=self.config.policy.name,
                 dry_run=self.config.daemon.dry_run)
        try:
            self.engine.run(stop, clock=self.clock, reload=reload, on_reload=self.reload,
                            sleep_scale=self.sleep_scale, between_ticks=self.refresh)
        finally:
            if self.control is not None:
                self.control.close()
            self.server.close()
            self.host.close()
            if self.tmpdir is not None:
                self.tmpdir.cleanup()
            log.info("stopped")


def _effective(cfg: Config, old: Config | None,
               scenario_tenants: tuple[configmod.TenantConfig, ...] | None) -> Config:
    """In simulation the scenario defines the tenants and the backend."""
    if scenario_tenants is None:
        return cfg
    return dataclasses.replace(
        cfg, tenants=scenario_tenants,
        daemon=dataclasses.replace(cfg.daemon, backend="sim"))


def build(
    cfg: Config,
    *,
    config_path: str | None,
    sim: str | None = None,
    speed: float = 1.0,
    dry_run: bool = False,
    listen: str | None = None,
) -> Daemon:
    # The control socket first: a second daemon on this host stops here, before it reads the
    # running one's journal, takes its push socket or its metrics port.
    control = _control_server(cfg, simulated=sim is not None or cfg.daemon.backend == "sim")
    try:
        return _build(cfg, control, config_path=config_path, sim=sim, speed=speed,
                      dry_run=dry_run, listen=listen)
    except BaseException:
        if control is not None:
            control.close()
        raise


def _build(
    cfg: Config,
    control: ControlServer | None,
    *,
    config_path: str | None,
    sim: str | None,
    speed: float,
    dry_run: bool,
    listen: str | None,
) -> Daemon:
    if dry_run:
        cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, dry_run=True))
    if listen is not None:
        cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, listen=listen))
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    scenario_tenants = None
    base: Config | None = None
    discovered: tuple[configmod.TenantConfig, ...] = ()
    host: Host
    clock: Callable[[], float]
    if sim is not None or cfg.daemon.backend == "sim":
        from gpuguardd.sim.scenario import ScenarioError, load_scenario

        try:
            scenario = load_scenario(sim or "noisy-neighbor")
        except ScenarioError as e:
            raise StartupError("; ".join(getattr(e, "errors", [str(e)]))) from None
        scenario_tenants = scenario.tenant_configs()
        cfg = _effective(cfg, None, scenario_tenants)
        host = scenario.build_host()
        clock = ScaledClock(speed).now
        tmpdir = tempfile.TemporaryDirectory(prefix="gpuguardd-sim-")
        state_dir, durable = tmpdir.name, False
    else:
        from gpuguardd.host.real import HostStartupError, build_real_host

        base = cfg
        discovered = _discover_at_start(cfg)
        cfg = discovery.merged(cfg, discovered)

        try:
            host = build_real_host(cfg)
        except HostStartupError as e:
            raise StartupError(str(e)) from None
        clock = WallClock().now
        state_dir, durable = cfg.daemon.state_dir, True
        speed = 1.0
    try:
        journal = Journal(state_dir, wall_clock_now=WallClock().now(), durable=durable)
    except JournalError as e:
        host.close()
        raise StartupError(str(e)) from None
    executor = Executor(host, journal, dry_run=cfg.daemon.dry_run)
    for outcome in executor.recover(clock()):
        log.info("recovered", action=outcome.action.kind, result=outcome.result.value,
                 detail=outcome.detail)
    board = StatusBoard(executor)
    holder: dict[str, Any] = {}

    def extra() -> dict[str, Any]:
        engine: Engine = holder["engine"]
        daemon: Daemon | None = holder.get("daemon")
        active = collections.Counter(e.action.kind for e in executor.active())
        push = getattr(host, "push_rejected_total", None)
        health = getattr(host, "lever_health", None)
        return {
            "host_errors": health() if callable(health) else {},
            "active_actions": dict(active),
            "push_rejected": push() if callable(push) else {},
            "tick_errors": engine.tick_errors,
            "reloads": dict(daemon.reloads) if daemon else {},
            "unavailable": list(executor.unavailable()),
        }

    collector = GpuguardCollector(lambda: holder["engine"].config, extra)
    operator = OperatorQueue(cfg.control.default_hold_s)
    try:
        engine = Engine(host, executor, cfg, policy_for(cfg), publishers=(collector, board),
                        notifier=from_environment(), operator=operator)
    except configmod.ConfigError as e:  # files named by [vgpu] / [tenant.vgpu] that cannot be used
        host.close()
        raise StartupError("; ".join(e.errors)) from None
    holder["engine"] = engine
    api = ControlApi(board, operator, lambda: engine.config)
    try:
        server = MetricsServer(cfg.metrics.listen, make_registry(collector), api.status)
    except OSError as e:
        host.close()
        raise StartupError(f"metrics.listen {cfg.metrics.listen}: {e.strerror or e}") from None
    if control is not None:
        control.attach(api)
    daemon = Daemon(cfg, host, engine, server, board, clock, speed, config_path,
                    scenario_tenants, tmpdir=tmpdir, control=control, base=base,
                    discovered=discovered,
                    next_discovery=time.monotonic() + cfg.kubernetes.refresh_s)
    holder["daemon"] = daemon
    return daemon


def _discover_at_start(cfg: Config) -> tuple[configmod.TenantConfig, ...]:
    """Kubernetes tenants at start. Without configured tenants a failure stops the start
    (the daemon would have nothing to protect); with them it is a warning."""
    if not cfg.kubernetes.enabled:
        return ()
    try:
        found = discovery.discover_tenants(cfg)
    except discovery.TenantDiscoveryError as e:
        if not cfg.tenants:
            raise StartupError(f"kubernetes tenant discovery failed and no tenant is "
                               f"configured: {e}") from None
        log.warning("tenant_discovery_failed", error=str(e),
                    configured=[t.name for t in cfg.tenants],
                    detail=f"retried every {cfg.kubernetes.refresh_s:g} s and on reload")
        return ()
    log.info("tenants_discovered", tenants=[t.name for t in found])
    return found


def _control_server(cfg: Config, *, simulated: bool) -> ControlServer | None:
    """The `gpuguardd ctl` socket. A daemon on the real host that cannot bind it refuses to
    start (a second daemon would fight the first); a simulated one runs without it."""
    if not cfg.control.socket:
        return None
    try:
        return ControlServer(cfg.control.socket, None,
                             max_request_bytes=cfg.control.max_request_bytes,
                             timeout_s=cfg.control.request_timeout_s)
    except OSError as e:
        if simulated:
            log.warning("control_socket_unavailable", path=cfg.control.socket, error=str(e))
            return None
        raise StartupError(f"control.socket {cfg.control.socket}: {e}") from None


def install_signal_handlers(stop: threading.Event, reload: threading.Event) -> None:
    """Handlers only set events; the loop does the work."""

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
