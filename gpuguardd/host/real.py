"""The real host: NVML, sysfs topology, cgroup block I/O, latency sources, hooks, MIG.

Composition only - each resource lives in its own module. Construction fails with
:class:`NoGpuError` when ``require_gpu = true`` and no NVIDIA GPU is usable; with
``require_gpu = false`` the host runs without NVML and offers the host-level levers (io
throttling, tenant hooks).

Safety rules enforced here as well as in the policy (defence in depth):

* a protected (``class = "latency"``) tenant is never *tightened* by the io lever; lifting a
  limit on it is allowed;
* tenants are restarted or stopped only when they may be (``restartable``);
* writes go only to the cgroup root (``cgroup_io``) and the state directory (hook env files).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpuguardd.config import Config, TenantConfig
from gpuguardd.host.cgroup_io import CgroupIo, CgroupVersion, parse_diskstats
from gpuguardd.host.hami import MIB, HamiError, HamiRegion, WriteResult, k8s_patch_plan
from gpuguardd.host.latency import PromScraper, ScrapeResult
from gpuguardd.host.nvml import Nvml, NvmlTick
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.push import PushReceiver, PushSocketError, PushWindow
from gpuguardd.host.tenants import TenantHooks
from gpuguardd.host.topology import (
    DeviceMonitor,
    PciPlacement,
    SysfsTopology,
    gpu_info,
    parse_interrupts,
)
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import (
    HostSignals,
    IoCounters,
    LatencyWindow,
    Placement,
    Snapshot,
    TenantClass,
    TenantSample,
)
from gpuguardd.model.topology import MigInstance, Topology

log = structlog.get_logger("gpuguardd.host")

MPS_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
#: without a udev monitor, rebuild the topology this often (seconds)
TOPOLOGY_POLL_S = 60.0


class HostStartupError(Exception):
    """The real host cannot start; the message tells the operator what to do."""


class NoGpuError(HostStartupError):
    """``require_gpu = true`` but no NVIDIA GPU is usable through NVML."""


@dataclass
class _TenantState:
    placement: Placement | None = None  # set when we restarted it somewhere
    mps_pct: int | None = None
    requests_total: float | None = None


class RealHost:
    def __init__(self, config: Config, paths: HostPaths, *, nvml: Nvml | None = None,
                 monitor: bool = True) -> None:
        self.config = config
        self.paths = paths
        self.sysfs = SysfsTopology(paths)
        self.nvml = nvml if nvml is not None else Nvml()
        self.lever_errors: dict[str, int] = {}
        self.health_events: dict[str, int] = {}
        if not self.nvml.available() or self.nvml.count() == 0:
            if config.daemon.require_gpu:
                raise NoGpuError(self._no_gpu_message())
            log.warning("no_gpu", detail=self.nvml.init_error or "NVML reports 0 GPUs",
                        mode="host-level levers only (require_gpu = false)")
            self._gpu = False
        else:
            self._gpu = True
        try:
            self.cgroups: CgroupIo | None = CgroupIo(paths.cgroup)
        except LeverError as e:
            log.warning("io_lever_unavailable", reason=str(e))
            self.cgroups = None
        self.hooks = TenantHooks(config.daemon.state_dir)
        self._regions: dict[Path, HamiRegion] = {}  # keep each region's original values
        self._tenants: dict[str, _TenantState] = {t.name: _TenantState() for t in config.tenants}
        self.push: PushReceiver | None = None
        self._scrapers: dict[str, PromScraper] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpuguardd-scrape")
        self._configure_latency(config)
        self._monitor: DeviceMonitor | None = None
        if monitor:
            try:
                self._monitor = DeviceMonitor()
            except Exception as e:  # pyudev/netlink failures vary; polling is the fallback
                log.warning("udev_monitor_unavailable", reason=str(e),
                            fallback=f"rebuild topology every {TOPOLOGY_POLL_S:.0f}s")
        self._topology = self._build_topology()
        self._topology_at = time.monotonic()

    # -- construction helpers ------------------------------------------------------------------
    def _no_gpu_message(self) -> str:
        pci = self.sysfs.nvidia_pci_devices()
        why = self.nvml.init_error or "NVML reports 0 GPUs"
        seen = (f" NVIDIA PCI devices are present ({', '.join(pci)}): is the driver loaded?"
                if pci else " No NVIDIA PCI device is present either.")
        return (f"require_gpu = true, but no NVIDIA GPU is usable: {why}.{seen} "
                "Set [daemon] require_gpu = false to run only the host-level levers "
                "(io throttling, tenant hooks) on this host, or run on the simulated host: "
                "gpuguardd run --sim")

    def _configure_latency(self, config: Config) -> None:
        push_tenants = [t.name for t in config.tenants if t.latency.source == "push"]
        if push_tenants and self.push is None:
            try:
                self.push = PushReceiver(config.push.socket, push_tenants,
                                         max_samples_per_tenant=config.push
                                         .max_samples_per_tenant_per_tick)
            except (PushSocketError, OSError) as e:
                raise HostStartupError(f"push.socket {config.push.socket}: {e}") from None
        elif self.push is not None:
            self.push.set_tenants(push_tenants)
        self._scrapers = {
            t.name: self._scrapers.get(t.name) or PromScraper(
                t.latency.url or "", t.latency.flavor, t.latency.labels, t.latency.timeout_s)
            for t in config.tenants if t.latency.source == "prometheus" and t.latency.url
        }

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded configuration (tenants, latency sources)."""
        self.config = config
        for t in config.tenants:
            self._tenants.setdefault(t.name, _TenantState())
        self._configure_latency(config)

    # -- topology --------------------------------------------------------------------------------
    def _build_topology(self) -> Topology:
        gpus = []
        places: list[PciPlacement] = []
        if self._gpu:
            for i in range(self.nvml.count()):
                st = self.nvml.static(i)
                place = self.sysfs.placement(st.pci_bus_id) if st.pci_bus_id else None
                if place is not None:
                    places.append(place)
                gpus.append(gpu_info(st, place, st.instances))
        disks = self.sysfs.block_devices()
        nics = self.sysfs.nics()
        places += [p for _, p in disks if p is not None]
        places += [n.placement for n in nics if n.placement is not None]
        return Topology(gpus=tuple(gpus), switches=self.sysfs.switches_for(places),
                        numa_nodes=self.sysfs.numa_nodes(),
                        block_devices=tuple(d for d, _ in disks),
                        nics=tuple(n.name for n in nics))

    def topology(self) -> Topology:
        return self._topology

    def _refresh_topology(self) -> None:
        changed: list[str] = []
        if self._monitor is not None:
            try:
                changed = self._monitor.changed()
            except Exception as e:  # a broken monitor degrades to polling, never to a crash
                log.warning("udev_monitor_failed", reason=str(e))
                self._monitor.close()
                self._monitor = None
        stale = self._monitor is None and time.monotonic() - self._topology_at > TOPOLOGY_POLL_S
        if changed or stale:
            if changed:
                log.info("topology_changed", events=changed[:10])
            self._topology = self._build_topology()
            self._topology_at = time.monotonic()

    # -- observe -------------------------------------------------------------------------------
    def observe(self, now: float) -> Snapshot:
        self._refresh_topology()
        tick = self.nvml.sample(now) if self._gpu else NvmlTick((), ())
        for ev in tick.events:
            self.health_events[ev.kind] = self.health_events.get(ev.kind, 0) + 1
            log.error("gpu_health", gpu=ev.gpu, kind=ev.kind, detail=ev.detail)
        pushed = self.push.drain() if self.push is not None else {}
        scraped = self._scrape_all()
        tenants = {t.name: self._tenant_sample(t, pushed.get(t.name), scraped.get(t.name))
                   for t in self.config.tenants}
        return Snapshot(
            now=now, topology=self._topology, gpus=tick.gpus, instances=tick.instances,
            tenants=tenants, host=self._host_signals(),
            busy_gpus=frozenset(g.gpu for g in tick.gpus if not g.healthy),
        )

    def _scrape_all(self) -> dict[str, ScrapeResult]:
        if not self._scrapers:
            return {}
        futures = {name: self._pool.submit(s.scrape) for name, s in self._scrapers.items()}
        out: dict[str, ScrapeResult] = {}
        for name, fut in futures.items():
            try:
                out[name] = fut.result(timeout=self._scrapers[name].timeout_s + 1.0)
            except Exception as e:  # a hung or crashing scrape marks only its tenant unknown
                out[name] = ScrapeResult(LatencyWindow(ok=False), None, str(e))
        return out

    def _tenant_sample(self, t: TenantConfig, pushed: PushWindow | None,
                       scraped: ScrapeResult | None) -> TenantSample:
        st = self._tenants.setdefault(t.name, _TenantState())
        if t.latency.source == "push":
            window = (LatencyWindow(ttft=pushed.ttft, tpot=pushed.tpot) if pushed is not None
                      else LatencyWindow())
            if pushed is not None:
                st.requests_total = float(pushed.requests_total)
        elif scraped is not None:
            window = scraped.window
            if scraped.requests_total is not None:
                st.requests_total = scraped.requests_total
        else:
            window = LatencyWindow(ok=False)
        io: tuple[IoCounters, ...] = ()
        if t.cgroup and self.cgroups is not None:
            try:
                io = self.cgroups.stats(t.cgroup)
            except LeverError:
                io = ()
            if t.devices:
                io = tuple(c for c in io if c.device in t.devices)
        return TenantSample(
            name=t.name, tenant_class=TenantClass(t.tenant_class), running=self._running(t),
            placement=st.placement or self._placement(t.gpu), latency=window, io=io,
            restartable=t.may_restart, mps_pct=st.mps_pct, work_done=st.requests_total,
        )

    def _running(self, t: TenantConfig) -> bool:
        """Is anything alive in the tenant's cgroup (descendants included)?"""
        if not t.cgroup or self.cgroups is None:
            return True  # nothing to check against: assume it runs
        try:
            cg = self.cgroups.resolve(t.cgroup)
        except LeverError:
            return False
        if not cg.is_dir():
            return False
        if self.cgroups.version is CgroupVersion.V2:
            with contextlib.suppress(OSError):
                for line in (cg / "cgroup.events").read_text().splitlines():
                    if line.startswith("populated "):
                        return line.split()[1] == "1"
        return _any_procs(cg)

    def _placement(self, spec: str | None) -> Placement | None:
        if spec is None:
            return None
        for g in self._topology.gpus:
            if spec in (str(g.index), g.uuid):
                return Placement(g.index)
            for inst in g.instances:
                if spec == inst.uuid:
                    return Placement(g.index, inst.gi_id)
        return None

    def _host_signals(self) -> HostSignals:
        irqs: dict[int, int] = {}
        disks: dict[str, int] = {}
        with contextlib.suppress(OSError):
            irqs = parse_interrupts(self.paths.interrupts.read_text())
        with contextlib.suppress(OSError):
            whole = frozenset(d.devno for d in self._topology.block_devices)
            disks = parse_diskstats(self.paths.diskstats.read_text(), whole_disks=whole)
        return HostSignals(irqs_per_cpu=irqs, disk_bytes=disks)

    # -- levers ----------------------------------------------------------------------------------
    def _tenant(self, name: str) -> TenantConfig:
        t = self.config.tenant(name)
        if t is None:
            raise LeverError(f"unknown tenant {name!r}", permanent=True)
        return t

    def _count(self, lever: str) -> None:
        self.lever_errors[lever] = self.lever_errors.get(lever, 0) + 1

    def _io(self, name: str) -> tuple[CgroupIo, str]:
        t = self._tenant(name)
        if self.cgroups is None:
            raise LeverError("no cgroup io/blkio controller on this host", permanent=True)
        if not t.cgroup:
            raise LeverError(f"tenant {name} has no cgroup configured", permanent=True)
        return self.cgroups, t.cgroup

    def get_io_limit(self, tenant: str, device: str) -> IoLimit:
        try:
            cg, rel = self._io(tenant)
            return cg.get_limit(rel, device)
        except LeverError:
            self._count("io")
            raise

    def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None:
        try:
            cg, rel = self._io(tenant)
            t = self._tenant(tenant)
            if t.tenant_class == "latency" and not limit.unlimited:
                original = cg.original(rel, device)
                if limit != original:
                    raise LeverError(f"tenant {tenant} is protected (class latency): "
                                     "it is never throttled", permanent=True)
            if cg.set_limit(rel, device, limit):
                log.info("io_limit_set", tenant=tenant, device=device, limit=str(limit))
        except LeverError:
            self._count("io")
            raise

    def restart_tenant(self, tenant: str, placement: Placement | None,
                       env: Mapping[str, str]) -> None:
        t = self._tenant(tenant)
        if not t.may_restart:
            raise LeverError(f"tenant {tenant} is not restartable", permanent=True)
        full_env = dict(env)
        if placement is not None:
            full_env["CUDA_VISIBLE_DEVICES"] = self._visible_device(placement)
        try:
            self.hooks.run(t, "restart", full_env)
        except LeverError:
            self._count("restart")
            raise
        st = self._tenants.setdefault(tenant, _TenantState())
        if placement is not None:
            st.placement = placement
        if MPS_ENV in env:
            st.mps_pct = int(env[MPS_ENV]) if env[MPS_ENV].isdigit() else None
        elif not env:
            st.mps_pct = None  # a plain restart drops earlier limits

    def _visible_device(self, p: Placement) -> str:
        try:
            g = self._topology.gpu(p.gpu)
        except KeyError:
            raise LeverError(f"no GPU {p.gpu} on this host", permanent=True) from None
        if p.gi_id is None:
            return g.uuid
        uuid = self.nvml.mig_uuid(p.gpu, p.gi_id) if self._gpu else None
        if not uuid:
            raise LeverError(f"no MIG instance {p} (yet)", retry_after_s=10.0)
        return uuid

    def stop_tenant(self, tenant: str) -> None:
        t = self._tenant(tenant)
        if not t.may_restart:
            raise LeverError(f"tenant {tenant} may not be stopped (not restartable)",
                             permanent=True)
        try:
            self.hooks.run(t, "stop", {})
        except LeverError:
            self._count("stop")
            raise

    def _need_gpu(self) -> None:
        if not self._gpu:
            raise LeverError("no NVML on this host: MIG levers unavailable", permanent=True)

    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        self._need_gpu()
        try:
            self.nvml.mig_destroy(gpu, gi_id)
        except LeverError:
            self._count("mig")
            raise
        finally:
            self._topology = self._build_topology()
        log.info("mig_destroyed", gpu=gpu, gi_id=gi_id)

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance:
        self._need_gpu()
        try:
            inst = self.nvml.mig_create(gpu, profile, start)
        except LeverError:
            self._count("mig")
            raise
        finally:
            self._topology = self._build_topology()
        log.info("mig_created", gpu=gpu, gi_id=inst.gi_id, profile=profile, start=start,
                 uuid=inst.uuid)
        return inst

    def _hami_dir(self, t: TenantConfig) -> Path:
        """The tenant's HAMi region directory, which must stay below ``[vgpu] hami_root``
        (symlinks included)."""
        v = t.vgpu
        if v is None:
            raise LeverError(f"tenant {t.name} has no [tenant.vgpu] table", permanent=True)
        root = Path(self.config.vgpu.hami_root)
        if v.region_dir is not None:
            d = root / v.region_dir
        elif v.pod_uid is not None and v.container is not None:
            d = root / f"{v.pod_uid}_{v.container}"
        else:
            raise LeverError(f"tenant {t.name}: [tenant.vgpu] names no HAMi region (pod_uid + "
                             "container, or region_dir)", permanent=True)
        try:
            inside = d.resolve().is_relative_to(root.resolve())
        except OSError as e:
            raise LeverError(f"{d}: {e}", retry_after_s=30.0) from None
        if not inside:
            raise LeverError(f"{d} leaves vgpu.hami_root {root}", permanent=True)
        return d

    def get_vgpu(self, tenant: str) -> dict[str, int] | None:
        """The share and memory limit in the tenant's region before our first write (the
        executor journals them), or None when there is no region to read."""
        try:
            d = self._hami_dir(self._tenant(tenant))
            files = sorted(d.glob("*.cache"))
        except (LeverError, OSError):
            return None
        v = self._tenant(tenant).vgpu
        device = v.device if v is not None else 0
        for f in files:
            region = self._regions.setdefault(f, HamiRegion(f))
            try:
                r = region.read(procs=False)
            except HamiError:
                continue
            sm = region.originals.get(("sm_limit", device), r.sm_limit_pct[device])
            mem = region.originals.get(("limit", device), r.limit_bytes[device])
            return {"share_pct": sm, "memory_bytes": mem}
        return None

    def set_vgpu(self, tenant: str, compute_pct: int, memory_bytes: int) -> None:
        """HAMi-core: ``limit[i]`` is written live (the next allocation honours it), then
        ``sm_limit[i]``, which HAMi-core reads once per process start, so the tenant is
        restarted through its restart hook with ``CUDA_DEVICE_SM_LIMIT`` and
        ``CUDA_DEVICE_MEMORY_LIMIT`` in its environment (for a process whose region is created
        afresh). A failed restart puts the region values back: the share is then not set."""
        t = self._tenant(tenant)
        try:
            if not t.may_restart:
                raise LeverError(f"tenant {tenant} is not restartable: HAMi-core reads sm_limit "
                                 "only when the process starts", permanent=True)
            d = self._hami_dir(t)
            assert t.vgpu is not None
            device = t.vgpu.device
            files = sorted(d.glob("*.cache")) if d.is_dir() else []
            if not files:
                raise LeverError(f"{d}: no HAMi region file (*.cache) yet: has the container "
                                 "started a CUDA process?", retry_after_s=30.0)
            done: list[tuple[HamiRegion, WriteResult]] = []
            try:
                for f in files:
                    region = self._regions.setdefault(f, HamiRegion(f))
                    done.append((region, region.set_memory_limit(device, memory_bytes)))
                    done.append((region, region.set_sm_limit(device, compute_pct)))
                env = {"CUDA_DEVICE_SM_LIMIT": str(compute_pct),
                       "CUDA_DEVICE_MEMORY_LIMIT": f"{-(-memory_bytes // MIB)}m"}
                self.hooks.run(t, "restart", env)
            except (HamiError, LeverError) as e:
                self._undo(done)
                if isinstance(e, HamiError):
                    raise LeverError(str(e), permanent=e.permanent,
                                     retry_after_s=30.0) from None
                raise
        except LeverError:
            self._count("vgpu")
            raise
        v = t.vgpu
        patch = None
        if v.k8s_owner is not None and v.k8s_namespace is not None and v.container is not None:
            # the restart keeps the pod; the operator's patch keeps the share past its re-creation
            kind, _, owner = v.k8s_owner.partition("/")
            patch = k8s_patch_plan(namespace=v.k8s_namespace, owner_kind=kind, owner_name=owner,
                                   container=v.container, container_index=v.k8s_container_index,
                                   share_pct=compute_pct, memory_bytes=memory_bytes)
        log.info("vgpu_set", tenant=tenant, share_pct=compute_pct, memory_bytes=memory_bytes,
                 regions=len(files), k8s_patch=patch)

    @staticmethod
    def _undo(done: list[tuple[HamiRegion, WriteResult]]) -> None:
        for region, w in reversed(done):
            if not w.changed:
                continue
            try:
                if w.field == "limit":
                    region.set_memory_limit(w.device, w.old)
                else:
                    region.set_sm_limit(w.device, w.old)
            except HamiError as e:
                log.error("vgpu_undo_failed", region=str(region.path), field=w.field,
                          error=str(e))

    # -- exporter hooks --------------------------------------------------------------------------
    def push_rejected_total(self) -> dict[str, int]:
        return self.push.rejected() if self.push is not None else {}

    def lever_health(self) -> dict[str, int]:
        """Failed lever calls by lever, plus GPU health events by kind (``gpu_<kind>``)."""
        out = dict(self.lever_errors)
        out.update({f"gpu_{k}": v for k, v in self.health_events.items()})
        out["nvml_errors"] = self.nvml.errors_total
        return out

    def close(self) -> None:
        if self.cgroups is not None:
            for failure in self.cgroups.restore_all():
                log.error("io_restore_failed", detail=failure)
        if self.push is not None:
            self.push.close()
        if self._monitor is not None:
            self._monitor.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.nvml.close()


def _any_procs(cg: Path, depth: int = 6) -> bool:
    try:
        if (cg / "cgroup.procs").read_text().strip():
            return True
    except OSError:
        return False
    if depth == 0:
        return False
    try:
        children = [d for d in cg.iterdir() if d.is_dir()]
    except OSError:
        return False
    return any(_any_procs(d, depth - 1) for d in children)


def build_real_host(config: Config) -> RealHost:
    """The composition root's entry point: paths from ``[daemon]``, everything else inside."""
    paths = HostPaths.of(config.daemon.fs_root, cgroup_root=config.daemon.cgroup_root)
    return RealHost(config, paths)
