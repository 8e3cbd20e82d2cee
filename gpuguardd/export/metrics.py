"""Prometheus exposition from a custom collector over the latest tick report.

Nothing is set from the loop: the engine publishes an immutable report, the collector turns
the latest one into metric families at scrape time (no stale label sets). Counters that must
survive across ticks (actions, tick durations) are accumulated here under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gpuguardd import __version__
from gpuguardd.config import Config
from gpuguardd.model.actions import ACTION_KINDS, Result
from gpuguardd.runtime.engine import TickReport

TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
QUANTILES = (("0.5", "p50"), ("0.99", "p99"), ("0.999", "p999"))


class GpuguardCollector(Collector):
    def __init__(
        self,
        config: Callable[[], Config],
        extra: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._extra = extra or (lambda: {})
        self._lock = threading.Lock()
        self._report: TickReport | None = None
        self._actions: dict[tuple[str, str], int] = {
            (k, r.value): 0 for k in ACTION_KINDS for r in Result
        }
        self._tick_buckets = [0] * (len(TICK_BUCKETS) + 1)
        self._tick_sum = 0.0
        self._ticks = 0

    # called by the engine, once per tick
    def publish(self, report: TickReport) -> None:
        with self._lock:
            self._report = report
            for o in report.outcomes:
                key = (o.action.kind, o.result.value)
                self._actions[key] = self._actions.get(key, 0) + 1
            i = next((i for i, b in enumerate(TICK_BUCKETS) if report.duration_s <= b),
                     len(TICK_BUCKETS))
            self._tick_buckets[i] += 1
            self._tick_sum += report.duration_s
            self._ticks += 1

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: families vary with the host

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            report = self._report
            actions = dict(self._actions)
            buckets = list(self._tick_buckets)
            tick_sum, ticks = self._tick_sum, self._ticks
        cfg = self._config()

        up = GaugeMetricFamily("gpuguard_up", "1 when the last tick completed")
        up.add_metric([], 1.0 if report is not None else 0.0)
        yield up
        info = GaugeMetricFamily("gpuguard_build_info", "build information", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

        acc = 0
        cum: list[tuple[str, float]] = []
        for b, n in zip(TICK_BUCKETS, buckets, strict=False):
            acc += n
            cum.append((repr(b), float(acc)))
        cum.append(("+Inf", float(ticks)))
        hist = HistogramMetricFamily("gpuguard_tick_duration_seconds",
                                     "time spent in one control-loop tick")
        hist.add_metric([], cum, tick_sum)
        yield hist

        fam = CounterMetricFamily("gpuguard_actions", "actions carried out, by kind and result",
                                  labels=["kind", "result"])
        for (kind, result), n in sorted(actions.items()):
            fam.add_metric([kind, result], float(n))
        yield fam

        slo = GaugeMetricFamily("gpuguard_tenant_slo_seconds", "configured p99 latency SLO",
                                labels=["tenant", "kind"])
        for t in cfg.tenants:
            if t.slo.ttft_p99_ms is not None:
                slo.add_metric([t.name, "ttft"], t.slo.ttft_p99_ms / 1e3)
            if t.slo.tpot_p99_ms is not None:
                slo.add_metric([t.name, "tpot"], t.slo.tpot_p99_ms / 1e3)
        yield slo

        if report is None:
            return
        yield from self._tenant_families(report)
        yield from self._gpu_families(report)
        yield from self._extra_families(self._extra())

    @staticmethod
    def _tenant_families(report: TickReport) -> Iterator[Metric]:
        statuses: Mapping[str, Any] = getattr(report.state, "tenants", {})
        # A summary (quantiles only) so that the `quantile` label is legitimate exposition.
        lat = Metric("gpuguard_tenant_latency_seconds",
                     "windowed latency quantiles per tenant (window_s sliding window)", "summary")
        level = GaugeMetricFamily("gpuguard_tenant_level",
                                  "escalation level (0 none, 1 io.max, 2 MPS, 3 placement, 4 MIG)",
                                  labels=["tenant"])
        viol = CounterMetricFamily("gpuguard_tenant_slo_violation_windows",
                                   "windows whose p99 exceeded the SLO", labels=["tenant"])
        known = GaugeMetricFamily("gpuguard_tenant_window_ok",
                                  "1 when the latency window had enough good samples",
                                  labels=["tenant"])
        for name, st in sorted(statuses.items()):
            for kind in ("ttft", "tpot"):
                q = getattr(st, kind, None)
                if q is None:
                    continue
                for label, attr in QUANTILES:
                    lat.add_sample("gpuguard_tenant_latency_seconds",
                                   {"tenant": name, "kind": kind, "quantile": label},
                                   float(getattr(q, attr)))
            level.add_metric([name], float(st.level))
            viol.add_metric([name], float(st.violation_windows_total))
            known.add_metric([name], 1.0 if st.window_ok else 0.0)
        yield lat
        yield level
        yield viol
        yield known
        shares = GaugeMetricFamily("gpuguard_tenant_vgpu_share_ratio",
                                   "HAMi compute share the vGPU planner holds for the tenant",
                                   labels=["tenant"])
        for name, pct in sorted(getattr(report.state, "vgpu_shares", {}).items()):
            shares.add_metric([name], pct / 100.0)
        yield shares
        changes = CounterMetricFamily("gpuguard_level_changes", "escalation level changes")
        changes.add_metric([], float(getattr(report.state, "level_changes_total", 0)))
        yield changes

        io = CounterMetricFamily("gpuguard_tenant_io_bytes", "block I/O per tenant and device",
                                 labels=["tenant", "device", "direction"])
        for name, t in sorted(report.snapshot.tenants.items()):
            for c in t.io:
                io.add_metric([name, c.device, "read"], float(c.rbytes))
                io.add_metric([name, c.device, "write"], float(c.wbytes))
        yield io

    @staticmethod
    def _gpu_families(report: TickReport) -> Iterator[Metric]:
        snap = report.snapshot
        labels = ["gpu", "UUID"]
        pcie = CounterMetricFamily("gpuguard_gpu_pcie_bytes",
                                   "PCIe bytes (NVML cumulative counters)",
                                   labels=[*labels, "direction"])
        util = GaugeMetricFamily("gpuguard_gpu_utilization_ratio", "SM busy ratio (NVML)",
                                 labels=labels)
        mem = GaugeMetricFamily("gpuguard_gpu_memory_utilization_ratio",
                                "memory-controller busy ratio (NVML)", labels=labels)
        uuid = {g.index: g.uuid for g in snap.topology.gpus}
        for g in snap.gpus:
            lv = [str(g.gpu), uuid.get(g.gpu, "")]
            if g.pcie_tx_bytes is not None:
                pcie.add_metric([*lv, "tx"], float(g.pcie_tx_bytes))
            if g.pcie_rx_bytes is not None:
                pcie.add_metric([*lv, "rx"], float(g.pcie_rx_bytes))
            if g.sm_util is not None:
                util.add_metric(lv, g.sm_util)
            if g.mem_util is not None:
                mem.add_metric(lv, g.mem_util)
        healthy = GaugeMetricFamily("gpuguard_gpu_healthy",
                                    "0 once NVML reported the GPU lost, reset-required or IRQ "
                                    "issue (it is then no longer queried)", labels=labels)
        for g in snap.gpus:
            healthy.add_metric([str(g.gpu), uuid.get(g.gpu, "")], 1.0 if g.healthy else 0.0)
        yield pcie
        yield util
        yield mem
        yield healthy
        inst = GaugeMetricFamily("gpuguard_mig_sm_activity_ratio",
                                 "SM activity per MIG instance (GPM)",
                                 labels=["gpu", "GPU_I_ID", "GPU_I_PROFILE"])
        profiles = {(i.gpu, i.gi_id): i.profile for g in snap.topology.gpus for i in g.instances}
        for s in snap.instances:
            if s.sm_activity is not None:
                inst.add_metric([str(s.gpu), str(s.gi_id), profiles.get((s.gpu, s.gi_id), "")],
                                s.sm_activity)
        yield inst

    @staticmethod
    def _extra_families(extra: Mapping[str, Any]) -> Iterator[Metric]:
        active = GaugeMetricFamily("gpuguard_active_actions",
                                   "temporary actions currently in force", labels=["kind"])
        for kind, n in sorted(extra.get("active_actions", {}).items()):
            active.add_metric([kind], float(n))
        yield active
        rejected = CounterMetricFamily("gpuguard_push_rejected",
                                       "push datagrams dropped, by reason", labels=["reason"])
        for reason, n in sorted(extra.get("push_rejected", {}).items()):
            rejected.add_metric([reason], float(n))
        yield rejected
        errors = CounterMetricFamily("gpuguard_tick_errors", "ticks that raised")
        errors.add_metric([], float(extra.get("tick_errors", 0)))
        yield errors
        reloads = CounterMetricFamily("gpuguard_config_reloads", "SIGHUP reloads by result",
                                      labels=["result"])
        for result, n in sorted(extra.get("reloads", {}).items()):
            reloads.add_metric([result], float(n))
        yield reloads
        host_errors = CounterMetricFamily(
            "gpuguard_host_errors", "failed host calls by lever (io, restart, stop, mig, vgpu), "
            "GPU health events (gpu_<kind>) and NVML query errors (nvml_errors)",
            labels=["kind"])
        for kind, n in sorted(extra.get("host_errors", {}).items()):
            host_errors.add_metric([kind], float(n))
        yield host_errors
        unavailable = GaugeMetricFamily("gpuguard_lever_unavailable",
                                        "levers given up after a permanent error",
                                        labels=["lever"])
        for lever in sorted(extra.get("unavailable", [])):
            unavailable.add_metric([lever], 1.0)
        yield unavailable


def make_registry(collector: GpuguardCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
