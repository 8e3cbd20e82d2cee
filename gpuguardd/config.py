"""Configuration: TOML loaded into frozen dataclasses and validated at load.

Every error names its key path (``tenant[1].slo.ttft_p99_ms``) and what is wrong; all errors
of a file are collected, not just the first. Values are never silently corrected.
Each field's metadata carries its unit/meaning (``doc``) and bounds (``min``/``max``), which
also feed the generated configuration reference.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

TENANT_NAME = re.compile(r"^[a-z0-9_-]{1,63}$")
POLICIES = ("static", "guards", "placement", "mig", "full")


class ConfigError(Exception):
    """One or more configuration problems, each ``path: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _f(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    meta: dict[str, Any] = {"doc": doc}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def slo_window_field() -> Any:
    """``slo_window_s`` of the vGPU planners (``[vgpu]`` and the ``allocate`` input)."""
    return _f(3600.0, "the span over which a tenant's p99 is held to its SLO, seconds: shares "
              "carry a margin for the sampling error of one such window's p99 (shorter: larger "
              "margin)", lo=10.0, hi=30 * 86_400.0)


def slo_confidence_field() -> Any:
    return _f(0.99, "probability that one slo_window_s window's p99 meets the SLO",
              lo=0.5, hi=0.9999)


def check_model(p: str, model: str | None, model_config: str | None, prompt_tokens: int,
                prompt_tokens_p99: int | None, errors: list[str]) -> None:
    """A vGPU tenant names a built-in model or a config.json, and a sane prompt spread."""
    from gpuguardd.model.llm import BUILTIN

    if model_config is None:
        if model is None:
            errors.append(f"{p}: needs model (built-in) or model_config")
        elif model not in BUILTIN:
            errors.append(f"{p}.model: unknown built-in model {model!r}; known: "
                          f"{', '.join(sorted(BUILTIN))} (or give model_config)")
    if prompt_tokens_p99 is not None and prompt_tokens_p99 < prompt_tokens:
        errors.append(f"{p}.prompt_tokens_p99: must be >= prompt_tokens ({prompt_tokens})")


def _required(doc: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    meta: dict[str, Any] = {"doc": doc, "required": True}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    return field(metadata=meta)


@dataclass(frozen=True)
class DaemonConfig:
    interval_s: float = _f(2.0, "tick period, seconds", lo=0.5, hi=10.0)
    backend: Literal["real", "sim"] = _f("real", "host backend: the real host or the simulator")
    dry_run: bool = _f(False, "decide and log, but write nothing")
    state_dir: str = _f(
        "/var/lib/gpuguardd", "journal of applied actions (must exist or be creatable)"
    )
    require_gpu: bool = _f(
        True, "false: run the host-level levers (io.max) on a host without NVIDIA GPUs"
    )
    cgroup_root: str = _f("/sys/fs/cgroup", "cgroup filesystem root; v2 or v1 detected at run time")
    fs_root: str = _f("/", "root of /sys and /proc (a fake tree in tests)")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _f("127.0.0.1:9835", "host:port of the read-only Prometheus endpoint")


@dataclass(frozen=True)
class PushConfig:
    socket: str = _f(
        "/run/gpuguardd/latency.sock", "unix datagram socket for per-request latency samples"
    )
    max_samples_per_tenant_per_tick: int = _f(
        100_000, "samples kept per tenant per tick; the excess is counted and dropped", lo=1
    )


@dataclass(frozen=True)
class ControlConfig:
    socket: str = _f(
        "/run/gpuguardd/control.sock",
        "unix stream socket of `gpuguardd ctl` (owned by root, mode 0600); \"\" disables it",
    )
    max_request_bytes: int = _f(
        4096, "a control request longer than this is refused, bytes", lo=64, hi=1_048_576
    )
    request_timeout_s: float = _f(
        5.0, "a client that sends no complete request within this is dropped, seconds",
        lo=0.1, hi=60.0,
    )
    default_hold_s: float = _f(
        600.0, "after `ctl release`, the ladder may not re-apply that action for this long, "
        "seconds (0: no hold)", lo=0.0, hi=86_400.0,
    )


@dataclass(frozen=True)
class PolicyConfig:
    name: Literal["static", "guards", "placement", "mig", "full"] = _f(
        "full", "which levers the ladder may use"
    )
    window_s: float = _f(
        10.0, "sliding window over which the tail quantiles are computed, seconds", lo=0.5
    )
    violation_windows: int = _f(3, "consecutive violating ticks before acting (Y)", lo=1, hi=100)
    min_samples: int = _f(20, "fewer samples in the window mark it unknown", lo=1)
    recovery_margin: float = _f(
        0.2, "recovered when p99 < (1 - margin) x SLO for recovery_dwell_s", lo=0.0, hi=0.9
    )
    recovery_dwell_s: float = _f(60.0, "calm time before relaxing one level, seconds", lo=0.0)
    level_dwell_s: float = _f(20.0, "minimum time on a level before moving again, seconds", lo=0.0)
    eval_period_s: float = _f(
        20.0, "time after an action before judging whether it helped, seconds", lo=0.0
    )
    cooldown_s: float = _f(60.0, "minimum time between two actions of one kind on one target", lo=0)
    throttle_ttl_s: float = _f(120.0, "expiry of an io throttle unless renewed, seconds", lo=1.0)
    throttle_step: float = _f(
        0.5, "tightening factor per step: new cap = step x observed rate", lo=0.05, hi=0.95
    )
    throttle_floor_bps: int = _f(
        10_000_000, "an io throttle never goes below this rate, bytes/s", lo=1
    )
    mig_reconfigs_per_hour: int = _f(4, "MIG reconfigurations per GPU per hour", lo=0, hi=60)
    mps_pct: int = _f(50, "MPS active-thread percentage given to compute suspects", lo=1, hi=100)
    diagnosis_window_s: float = _f(
        180.0,
        "history over which a victim's tail is correlated with its neighbours' signals, seconds",
        lo=10.0,
        hi=3600.0,
    )
    min_improvement: float = _f(
        0.1,
        "an action helped if the p99 fell by this fraction of its value at the action (or met "
        "the SLO); otherwise it is reverted",
        lo=0.0,
        hi=0.9,
    )
    throttle_relax_step: float = _f(
        0.5,
        "relaxation per calm recovery_dwell_s: new cap = (1 + step) x cap, released at the "
        "suspect's pre-throttle rate (relax slowly, tighten fast)",
        lo=0.05,
        hi=4.0,
    )
    stopgap_s: float = _f(
        60.0,
        "an io throttle that has held a restartable suspect below its demand this long is "
        "replaced by moving the suspect off the shared link when a placement allows, to give "
        "it its bandwidth back (0 = never), seconds",
        lo=0.0,
    )
    significance: float = _f(
        0.05,
        "a violating window is acted on only if its count of samples above the SLO is "
        "significantly above the 1 % a p99 SLO allows (one-sided binomial test at this "
        "level): a p99 over few samples is noisy and a lone excursion regresses by itself; "
        "1.0 disables the test",
        lo=1e-9,
        hi=1.0,
    )
    restart_outage_s: float = _f(
        40.0,
        "expected outage of restarting a protected tenant (drain, MIG reconfiguration, "
        "restart): it is resized or moved only once more of its requests have missed the SLO "
        "than this outage would delay (ski rental), seconds",
        lo=0.0,
    )
    move_outage_s: float = _f(
        30.0,
        "expected outage of restarting a restartable batch tenant to move it, seconds (or its "
        "last measured move or MPS restart, when longer): on a PCIe cause the ladder moves the "
        "suspect at once instead of trying io.max when the throttle that would meet the SLO is "
        "predicted to cost it more throughput before stopgap_s than this outage",
        lo=0.0,
    )
    lever_memory_s: float = _f(
        900.0, "a lever whose trial failed is not retried for the same victim for this long "
        "(doubling with each further failure), seconds",
        lo=0.0,
    )


@dataclass(frozen=True)
class SloConfig:
    ttft_p99_ms: float | None = _f(None, "p99 time to first token, milliseconds", lo=0.001)
    tpot_p99_ms: float | None = _f(None, "p99 time per output token, milliseconds", lo=0.001)


@dataclass(frozen=True)
class LatencySourceConfig:
    source: Literal["push", "prometheus"] = _f("push", "where the tenant's latency comes from")
    url: str | None = _f(None, "prometheus: the serving engine's /metrics URL")
    flavor: Literal["vllm", "sglang"] = _f("vllm", "prometheus: metric names to read")
    labels: dict[str, str] = _f({}, "prometheus: label values the series must match")
    timeout_s: float = _f(1.0, "prometheus: scrape timeout, seconds", lo=0.05, hi=30.0)


@dataclass(frozen=True)
class HooksConfig:
    restart: list[str] | None = _f(None, "argv to restart the tenant (no shell)")
    stop: list[str] | None = _f(None, "argv to stop/drain the tenant (no shell)")
    start: list[str] | None = _f(None, "argv to start the tenant (no shell)")
    timeout_s: float = _f(60.0, "a hook still running after this is killed, seconds", lo=1.0)


@dataclass(frozen=True)
class TenantVgpuConfig:
    """A HAMi vGPU tenant whose compute share the daemon sizes (``[vgpu] enabled = true``)."""

    model: str | None = _f(None, "built-in model name (or the label of model_config)")
    model_config: str | None = _f(
        None, "absolute path to the model's Hugging Face config.json")
    prompt_tokens: int = _f(1024, "typical prompt length, tokens", lo=1, hi=1_000_000)
    prompt_tokens_p99: int | None = _f(
        None, "99th percentile of the prompt length, tokens (default: prompt_tokens)",
        lo=1, hi=10_000_000)
    output_tokens: int = _f(128, "typical output length, tokens", lo=1, hi=1_000_000)
    max_batch: int = _f(32, "most concurrent sequences the engine runs (max_num_seqs)",
                        lo=1, hi=256)
    pod_uid: str | None = _f(None, "HAMi: the pod's UID (with container): the region directory "
                                   "is <hami_root>/<pod_uid>_<container>")
    container: str | None = _f(None, "HAMi: the container name within the pod")
    region_dir: str | None = _f(
        None, "HAMi: the region directory relative to [vgpu] hami_root, instead of "
        "pod_uid + container")
    device: int = _f(0, "index of the tenant's GPU within its HAMi region", lo=0, hi=15)
    initial_share_pct: int | None = _f(
        None, "share the tenant starts with, percent (default: the observed share, else 100)",
        lo=1, hi=100)
    memory_bytes: int | None = _f(
        None, "HAMi memory limit, bytes (default: estimated from the model, prompt/output "
        "tokens and max_batch)", lo=1)
    k8s_namespace: str | None = _f(None, "Kubernetes namespace of the owning workload (for the "
                                         "patch plan shown in /status)")
    k8s_owner: str | None = _f(None, "owning workload as kind/name, e.g. 'Deployment/qwen'")
    k8s_container_index: int = _f(0, "index of the container in the pod template", lo=0,
                                  hi=255)


@dataclass(frozen=True)
class VgpuConfig:
    enabled: bool = _f(False, "size HAMi compute shares of [tenant.vgpu] tenants at run time")
    predictors: str | None = _f(
        None, "predictors JSON written by `gpuguardd fit` (default: built-in predictors fitted "
        "on the synthetic profile)")
    gpu_model: str | None = _f(
        None, "GPU model for the predictors, e.g. 'A100-SXM4-80GB' (default: the name NVML "
        "reports for the tenant's GPU)")
    hami_root: str = _f("/usr/local/vgpu/containers",
                        "host directory holding HAMi-core's <pod_uid>_<container> region dirs")
    demand_window_s: float = _f(
        60.0, "demand = first tokens counted over this window, seconds (longer: steadier, "
        "slower to react)", lo=2.0, hi=3600.0)
    demand_band: float = _f(0.2, "relative demand change that justifies lowering a share",
                            lo=0.0, hi=10.0)
    activity_band: float = _f(0.1, "absolute co-runner activity change that justifies lowering "
                                   "a share", lo=0.0, hi=1.0)
    lower_band_pct: int = _f(3, "lowering by fewer points is not worth a restart, percent",
                             lo=1, hi=100)
    headroom_pct: int = _f(2, "kept above the requirement when lowering, percent", lo=0, hi=50)
    cooldown_s: float = _f(300.0, "minimum time between two share changes of one tenant, s",
                           lo=0.0, hi=86_400.0)
    restart_budget_per_hour: int = _f(
        6, "share changes (each restarts a tenant) per rolling hour, whole host", lo=0, hi=600)
    restart_outage_s: float = _f(
        30.0, "what a share change's restart costs the tenant, seconds: a raise waits until "
        "more of its requests missed the SLO than this outage delays (ski rental), unless the "
        "tenant is overloaded", lo=0.0, hi=3600.0)
    slo_window_s: float = slo_window_field()
    slo_confidence: float = slo_confidence_field()


@dataclass(frozen=True)
class KubernetesConfig:
    """Tenants discovered from the pods of this node (``gpuguard.io/*`` annotations)."""

    enabled: bool = _f(False, "discover tenants from the kubelet and the API server at start, "
                              "on reload and every refresh_s (needs gpuguardd[kubernetes])")
    pod_resources_socket: str = _f("/var/lib/kubelet/pod-resources/kubelet.sock",
                                   "the kubelet's PodResources v1 gRPC socket")
    node_name_env: str = _f("NODE_NAME", "environment variable holding this node's name "
                                         "(the downward API's spec.nodeName)")
    api_server: str = _f("", "API server base URL (e.g. a kubectl proxy); \"\": in-cluster, "
                             "with the pod's service account")
    latency_namespaces: list[str] = _f(
        [], "namespaces whose pods may declare gpuguard.io/class = latency (protected); "
        "elsewhere such pods are skipped")
    namespaces: list[str] | None = _f(None, "discover only pods of these namespaces "
                                            "(default: all)")
    refresh_s: float = _f(60.0, "rediscovery period, seconds", lo=5.0, hi=86_400.0)
    timeout_s: float = _f(2.0, "timeout of each kubelet and API server request, seconds",
                          lo=0.1, hi=30.0)


@dataclass(frozen=True)
class TenantConfig:
    name: str = _required("tenant name, [a-z0-9_-]{1,63}")
    tenant_class: Literal["latency", "batch"] = _f(
        "batch", "latency = protected; batch = may be throttled, moved"
    )
    cgroup: str | None = _f(None, "cgroup path relative to the cgroup root")
    restartable: bool | None = _f(
        None, "may the daemon restart it (default: batch yes, latency no)"
    )
    gpu: str | None = _f(None, "GPU index, UUID or MIG UUID it runs on")
    devices: list[str] = _f([], "block devices (MAJ:MIN) to throttle; default: all it uses")
    slo: SloConfig = field(default_factory=SloConfig, metadata={"doc": "latency SLO"})
    latency: LatencySourceConfig = field(
        default_factory=LatencySourceConfig, metadata={"doc": "latency source"}
    )
    hooks: HooksConfig = field(default_factory=HooksConfig, metadata={"doc": "tenant hooks"})
    vgpu: TenantVgpuConfig | None = field(
        default=None, metadata={"doc": "HAMi vGPU share sizing (needs [vgpu] enabled)"})

    @property
    def may_restart(self) -> bool:
        if self.restartable is not None:
            return self.restartable
        return self.tenant_class == "batch"


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig, metadata={"doc": "daemon"})
    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata={"doc": "metrics"})
    push: PushConfig = field(default_factory=PushConfig, metadata={"doc": "push socket"})
    control: ControlConfig = field(
        default_factory=ControlConfig, metadata={"doc": "operator control socket"}
    )
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata={"doc": "ladder"})
    vgpu: VgpuConfig = field(default_factory=VgpuConfig,
                             metadata={"doc": "vGPU (HAMi) share allocator"})
    kubernetes: KubernetesConfig = field(
        default_factory=KubernetesConfig, metadata={"doc": "Kubernetes tenant discovery"})
    tenants: tuple[TenantConfig, ...] = field(default=(), metadata={"doc": "tenants"})

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


# TOML key -> dataclass field name, where a Python keyword or clarity forces a different name.
_RENAMES: dict[str, str] = {"class": "tenant_class", "tenant": "tenants"}
_FIELD_TO_KEY: dict[str, str] = {v: k for k, v in _RENAMES.items()}


def toml_key(field_name: str) -> str:
    return _FIELD_TO_KEY.get(field_name, field_name)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return "array"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {float: "number", int: "integer", bool: "boolean", str: "string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        for opt in options:
            trial: list[str] = []
            out = _convert(opt, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        errors.append(f"{path}: must be one of {_type_name(tp)}, got {_describe(value)}")
        return None
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{path}: expected an array, got {_describe(value)}")
            return None
        items = [_convert(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a table, got {_describe(value)}")
            return None
        return {str(k): _convert(val_tp, v, f"{path}.{k}", errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a table, got {_describe(value)}")
            return None
        return _build(tp, value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    errors.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    return None


def _describe(value: Any) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """``get_type_hints`` resolved once per class (it dominates validating large files)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[Any], data: Mapping[str, Any], path: str, errors: list[str]) -> Any:
    hints = _hints(cls)
    fields = {toml_key(f.name): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            hint = _closest(key, list(fields))
            errors.append(
                f"{prefix}{key}: unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
            )
    for key, f in fields.items():
        kpath = f"{prefix}{key}"
        if key not in data:
            if f.metadata.get("required"):
                errors.append(f"{kpath}: required key is missing")
            continue
        before = len(errors)
        value = _convert(hints[f.name], data[key], kpath, errors)
        if len(errors) > before:
            continue
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                # nan slips through every bound check (an interval of nan spins the loop)
                errors.append(f"{kpath}: must be a finite number, got {value}")
                continue
            if lo is not None and value < lo:
                errors.append(f"{kpath}: must be >= {lo}, got {value}")
                continue
            if hi is not None and value > hi:
                errors.append(f"{kpath}: must be <= {hi}, got {value}")
                continue
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:  # a required key was missing: the error is already recorded
        return None


def _closest(key: str, options: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return match[0] if match else None


def _check_semantics(cfg: Config, errors: list[str]) -> None:
    seen: set[str] = set()
    for i, t in enumerate(cfg.tenants):
        p = f"tenant[{i}]"
        if not TENANT_NAME.match(t.name):
            errors.append(f"{p}.name: {t.name!r} must match [a-z0-9_-]{{1,63}}")
        if t.name in seen:
            errors.append(f"{p}.name: duplicate tenant name {t.name!r}")
        seen.add(t.name)
        if t.tenant_class == "latency" and t.slo.ttft_p99_ms is None and t.slo.tpot_p99_ms is None:
            errors.append(f"{p}.slo: a latency tenant needs ttft_p99_ms or tpot_p99_ms")
        if t.cgroup is not None:
            c = t.cgroup
            if c.startswith("/") or ".." in c.split("/") or "\0" in c or not c.strip("/"):
                errors.append(f"{p}.cgroup: {c!r} must be a relative path without '..'")
        if t.latency.source == "prometheus" and not t.latency.url:
            errors.append(f"{p}.latency.url: required when source = 'prometheus'")
        for name, argv in (
            ("restart", t.hooks.restart),
            ("stop", t.hooks.stop),
            ("start", t.hooks.start),
        ):
            if argv is not None and (not argv or not argv[0]):
                errors.append(f"{p}.hooks.{name}: must be a non-empty argv list")
        for j, dev in enumerate(t.devices):
            if not re.match(r"^\d+:\d+$", dev):
                errors.append(f"{p}.devices[{j}]: {dev!r} is not MAJ:MIN")
        if t.vgpu is not None:
            _check_vgpu_tenant(t, f"{p}.vgpu", errors)
    root = cfg.vgpu.hami_root
    if not root.startswith("/") or "\0" in root or ".." in root.split("/"):
        errors.append(f"vgpu.hami_root: {root!r} must be an absolute path without '..'")
    if cfg.vgpu.enabled and not any(t.vgpu is not None for t in cfg.tenants):
        errors.append("vgpu.enabled: no tenant has a [tenant.vgpu] table")
    k8s = cfg.kubernetes
    if k8s.enabled and not k8s.pod_resources_socket.startswith("/"):
        errors.append(f"kubernetes.pod_resources_socket: {k8s.pod_resources_socket!r} must be "
                      "an absolute path")
    if k8s.api_server and not k8s.api_server.startswith(("http://", "https://")):
        errors.append(f"kubernetes.api_server: {k8s.api_server!r} is not an http(s) URL")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k8s.node_name_env):
        errors.append(f"kubernetes.node_name_env: {k8s.node_name_env!r} is not an environment "
                      "variable name")
    sock = cfg.control.socket
    if sock and (not sock.startswith("/") or "\0" in sock or len(sock.encode()) > 107):
        errors.append(f"control.socket: {sock!r} must be an absolute path of at most 107 bytes")
    host, _, port = cfg.metrics.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        errors.append(f"metrics.listen: {cfg.metrics.listen!r} is not host:port")


def _check_vgpu_tenant(t: TenantConfig, p: str, errors: list[str]) -> None:
    v = t.vgpu
    assert v is not None
    if v.model_config is not None and not v.model_config.startswith("/"):
        errors.append(f"{p}.model_config: {v.model_config!r} must be an absolute path")
    check_model(p, v.model, v.model_config, v.prompt_tokens, v.prompt_tokens_p99, errors)
    if t.slo.ttft_p99_ms is None and t.slo.tpot_p99_ms is None:
        errors.append(f"{p.rsplit('.', 1)[0]}.slo: a vGPU tenant needs ttft_p99_ms or "
                      "tpot_p99_ms")
    if (v.pod_uid is None) != (v.container is None):
        errors.append(f"{p}: pod_uid and container go together")
    if v.region_dir is not None and v.pod_uid is not None:
        errors.append(f"{p}.region_dir: give region_dir or pod_uid + container, not both")
    for key, part in (("pod_uid", v.pod_uid), ("container", v.container)):
        if part is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$", part):
            errors.append(f"{p}.{key}: {part!r} is not a pod UID / container name")
    if v.region_dir is not None:
        d = v.region_dir
        if (not d.strip("/") or d.startswith("/") or ".." in d.split("/") or "\0" in d):
            errors.append(f"{p}.region_dir: {d!r} must be a relative path below "
                          "vgpu.hami_root without '..'")
    if (v.k8s_owner is not None) and not re.match(r"^[A-Za-z]+/[a-z0-9.-]{1,253}$", v.k8s_owner):
        errors.append(f"{p}.k8s_owner: {v.k8s_owner!r} is not kind/name")
    if (v.k8s_owner is None) != (v.k8s_namespace is None):
        errors.append(f"{p}: k8s_namespace and k8s_owner go together")


def from_dict(data: Mapping[str, Any]) -> Config:
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    if cfg is not None and not errors:
        _check_semantics(cfg, errors)
    if errors:
        raise ConfigError(errors)
    assert isinstance(cfg, Config)
    return cfg


def loads(text: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    return from_dict(data)


def load(path: str | Path, *, trusted_only: bool = False) -> Config:
    """Load and validate ``path``. ``trusted_only`` (the daemon, running as root) refuses a
    file that anyone but its owner may write: such a file could point the daemon's writes at
    another cgroup or make it run another hook."""
    p = Path(path)
    try:
        if trusted_only:
            mode = p.stat().st_mode
            if mode & 0o022:
                raise ConfigError([f"{p}: is group- or world-writable (mode {mode & 0o777:o}); "
                                   "chmod go-w it first"])
            if p.resolve().parent.stat().st_mode & 0o002:
                raise ConfigError([f"{p}: its directory is world-writable; anyone could replace "
                                   "the file"])
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{p}: cannot read: {e}"]) from None
    return loads(text)


def reference() -> str:
    """A Markdown configuration reference generated from the dataclasses."""
    lines: list[str] = []

    def walk(cls: type[Any], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = toml_key(f.name)
            tp = hints[f.name]
            inner = get_args(tp)[0] if get_origin(tp) is tuple else tp
            if get_origin(inner) in (Union, types.UnionType):  # an optional table
                inner = next(a for a in get_args(inner) if a is not type(None))
            if dataclasses.is_dataclass(inner) and isinstance(inner, type):
                table = f"[[{prefix}{key}]]" if get_origin(tp) is tuple else f"[{prefix}{key}]"
                lines.append(f"\n### `{table}`\n")
                walk(inner, f"{prefix}{key}.")
                continue
            default = (
                "required"
                if f.metadata.get("required")
                else (
                    repr(f.default)
                    if f.default is not dataclasses.MISSING
                    else repr(f.default_factory())
                    if f.default_factory is not dataclasses.MISSING
                    else ""
                )
            )
            bounds = ""
            if "min" in f.metadata or "max" in f.metadata:
                bounds = f" [{f.metadata.get('min', '')}, {f.metadata.get('max', '')}]"
            lines.append(
                f"- `{key}` ({_type_name(tp)}{bounds}, default {default}): "
                f"{f.metadata.get('doc', '')}"
            )

    walk(Config, "")
    return "\n".join(lines).lstrip() + "\n"
