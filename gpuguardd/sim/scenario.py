"""Scenario files (TOML, CONTRACTS.md "Scenario files"): load, validate, build a SimHost.

Errors name their key path (``tenant[1].arrivals.rate_rps: must be > 0``); all problems of a
file are collected. Relative paths resolve against the scenario file's folder; a path starting
with ``@shared/`` resolves against the shared data folder (``../shared/data`` from the current
directory or from the project root, or ``$GPUGUARDD_SHARED_DATA``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gpuguardd.config import TENANT_NAME, SloConfig, TenantConfig, TenantVgpuConfig
from gpuguardd.model.llm import BUILTIN
from gpuguardd.sim.hardware import GPU_MODELS, MigState, gpu_model
from gpuguardd.sim.host import EventSpec, SimHost
from gpuguardd.sim.topology import PRESETS, HostSpec, TopologyError, load_nccl_xml, preset
from gpuguardd.sim.traces import Trace, TraceError, load_trace
from gpuguardd.sim.workloads import TenantSpec

BUILTIN_SCENARIOS = (
    "noisy-neighbor", "pcie-hotspot", "azure-conv", "shared-gpu", "p4d-x2-hour",
)
SHARED_PREFIX = "@shared/"


class ScenarioError(Exception):
    """One or more scenario problems, each ``path: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# -- the validated scenario ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    seconds: float
    seed: int
    host_spec: HostSpec
    tenants: tuple[TenantSpec, ...]
    events: tuple[EventSpec, ...] = ()
    mig_layout: Mapping[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    restart_s: float = 20.0
    reconfig_s: float = 18.0
    description: str = ""
    source: str = ""

    def build_host(self) -> SimHost:
        return SimHost(
            self.host_spec, self.tenants, mig_layout=self.mig_layout, events=self.events,
            seed=self.seed, restart_s=self.restart_s, reconfig_s=self.reconfig_s,
            apply_set=apply_set,
        )

    def tenant_configs(self) -> tuple[TenantConfig, ...]:
        """What an operator's config would say about each tenant - nothing more."""
        uuids: dict[tuple[int, int], str] = {}
        for g, profiles in self.mig_layout.items():
            ms = MigState(g, gpu_model(self.host_spec.gpu_models[g]), enabled=True)
            for i, p in enumerate(profiles):
                uuids[(g, i)] = ms.first_fit(p).uuid
        devices = {t.name: dev for t, dev in self._devices().items()}
        out: list[TenantConfig] = []
        for t in self.tenants:
            gpu = (uuids.get((t.gpu, t.instance if t.instance is not None else 0), str(t.gpu))
                   if t.gpu in self.mig_layout else str(t.gpu))
            out.append(TenantConfig(
                name=t.name, tenant_class=t.tenant_class,  # type: ignore[arg-type]
                cgroup=f"sim/{t.name}", restartable=t.restartable, gpu=gpu,
                devices=[devices[t.name]] if t.name in devices else [],
                slo=SloConfig(ttft_p99_ms=t.ttft_p99_ms, tpot_p99_ms=t.tpot_p99_ms),
                vgpu=_vgpu_config(t),
            ))
        return tuple(out)

    def _devices(self) -> dict[TenantSpec, str]:
        disks = self.host_spec.topology.block_devices
        out: dict[TenantSpec, str] = {}
        for t in self.tenants:
            if t.kind != "etl":
                continue
            if t.device is not None:
                out[t] = next(d.devno for d in disks if t.device in (d.devno, d.name))
            else:
                numa = self.host_spec.topology.gpu(t.gpu).numa_node
                local = [d for d in disks if d.numa_node == numa] or list(disks)
                out[t] = local[0].devno
        return out


def _vgpu_config(t: TenantSpec) -> TenantVgpuConfig | None:
    """A HAMi tenant (an inference server given an initial share): what its operator knows -
    the model, the typical lengths and their p99 (lognormal spread ``token_sigma``)."""
    if t.kind != "inference" or t.share_pct is None:
        return None
    return TenantVgpuConfig(
        model=t.model, prompt_tokens=t.prompt_tokens,
        prompt_tokens_p99=math.ceil(t.prompt_tokens * math.exp(2.326 * t.token_sigma)),
        output_tokens=t.output_tokens, initial_share_pct=t.share_pct,
        max_batch=min(t.max_batch, 32), memory_bytes=t.memory_limit_bytes)


# -- set events ----------------------------------------------------------------------------------

#: tenant fields a ``set`` event may change while the scenario runs
SETTABLE = (
    "read_bps", "rate_rps", "prompt_tokens", "output_tokens", "prefix_hit_rate",
    "prefix_fraction", "input_bytes_per_request", "kv_offload", "step_s", "batch_bytes",
    "hbm_fraction", "chunk_bytes", "streams", "token_sigma",
)


def apply_set(spec: TenantSpec, values: Mapping[str, object]) -> TenantSpec:
    return dataclasses.replace(spec, **dict(values))  # type: ignore[arg-type]


# -- validation helpers --------------------------------------------------------------------------

_Check = Callable[[Any], str | None]


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(lo: float | None = None, hi: float | None = None, *, strict_lo: bool = False,
            integer: bool = False) -> _Check:
    def check(v: Any) -> str | None:
        if integer and (not isinstance(v, int) or isinstance(v, bool)):
            return f"expected an integer, got {v!r}"
        if not _is_num(v):
            return f"expected a number, got {v!r}"
        if not math.isfinite(v):  # nan passes every bound; inf seconds or rates never end
            return f"must be a finite number, got {v}"
        if lo is not None and (v <= lo if strict_lo else v < lo):
            return f"must be {'>' if strict_lo else '>='} {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
        return None
    return check


def _choice(*options: str) -> _Check:
    def check(v: Any) -> str | None:
        if v not in options:
            return f"must be one of {', '.join(repr(o) for o in options)}, got {v!r}"
        return None
    return check


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"expected a non-empty string, got {v!r}"


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


_POS = _number(0, strict_lo=True)
_NONNEG = _number(0)
_FRAC = _number(0, 1)
_PCT = _number(1, 100, integer=True)
_POS_INT = _number(1, integer=True)

#: tenant key -> (check, TenantSpec field)
_TENANT_KEYS: dict[str, tuple[_Check, str]] = {
    "gpu": (_number(0, integer=True), "gpu"),
    "instance": (_number(0, integer=True), "instance"),
    "restartable": (_boolean, "restartable"),
    "model": (_choice(*BUILTIN), "model"),
    "kv_offload": (_boolean, "kv_offload"),
    "input_bytes_per_request": (_NONNEG, "input_bytes_per_request"),
    "prompt_tokens": (_POS_INT, "prompt_tokens"),
    "output_tokens": (_POS_INT, "output_tokens"),
    "token_sigma": (_number(0, 2), "token_sigma"),
    "prefix_hit_rate": (_FRAC, "prefix_hit_rate"),
    "prefix_fraction": (_FRAC, "prefix_fraction"),
    "max_batch_tokens": (_POS_INT, "max_batch_tokens"),
    "max_batch": (_POS_INT, "max_batch"),
    "host_delay_ms": (_NONNEG, "host_delay_ms"),
    "device": (_string, "device"),
    "read_bps": (_POS, "read_bps"),
    "chunk_bytes": (_number(4096), "chunk_bytes"),
    "buffers": (_POS_INT, "buffers"),
    "step_s": (_POS, "step_s"),
    "batch_bytes": (_NONNEG, "batch_bytes"),
    "hbm_fraction": (_FRAC, "hbm_fraction"),
    "streams": (_POS, "streams"),
    "sm_weight": (_POS, "sm_weight"),
    "mps_pct": (_PCT, "mps_pct"),
    "share_pct": (_PCT, "share_pct"),
    "memory_limit_bytes": (_POS_INT, "memory_limit_bytes"),
    "rate_rps": (_NONNEG, "rate_rps"),  # only through set events; [tenant] uses arrivals
}
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "inference": {"streams": 1.0, "sm_weight": 1.0},
    "etl": {"streams": 4.0, "sm_weight": 1.0},
    "training": {"streams": 2.0, "sm_weight": 4.0},
}
_FLOAT_FIELDS = {f.name for f in dataclasses.fields(TenantSpec) if f.type in ("float",
                                                                               "float | None")}


def _unknown(table: Mapping[str, Any], allowed: set[str], path: str, errors: list[str]) -> None:
    import difflib

    for key in table:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            errors.append(f"{path}{key}: unknown key{hint}")


def _table(v: Any, path: str, errors: list[str]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    errors.append(f"{path}: expected a table, got {v!r}")
    return {}


def shared_data_dir() -> Path:
    """The shared data folder: $GPUGUARDD_SHARED_DATA, or ../shared/data from the current
    directory or from the project root."""
    env = os.environ.get("GPUGUARDD_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "data",
                   Path(__file__).resolve().parents[2] / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FileNotFoundError(
        "shared data folder not found (looked in "
        + ", ".join(str(c) for c in candidates) + "); set GPUGUARDD_SHARED_DATA"
    )


def _resolve(raw: str, base: Path | None) -> Path:
    if raw.startswith(SHARED_PREFIX):
        return shared_data_dir() / raw[len(SHARED_PREFIX):]
    p = Path(raw)
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


# -- parsing -------------------------------------------------------------------------------------


def _parse_host(data: dict[str, Any], base: Path | None,
                errors: list[str]) -> tuple[HostSpec | None, dict[int, tuple[str, ...]], float,
                                            float]:
    host = _table(data.get("host", {}), "host", errors)
    _unknown(host, {"preset", "topology", "gpu", "mig", "restart_s", "reconfig_s",
                    "nvme_read_bps"}, "host.", errors)
    spec: HostSpec | None = None
    if "preset" in host and "topology" in host:
        errors.append("host: give either preset or topology, not both")
    elif "topology" in host:
        gpu = host.get("gpu")
        if (why := _choice(*GPU_MODELS)(gpu)) is not None:
            errors.append(f"host.gpu: {why} (required with topology)")
        elif (why := _string(host["topology"])) is not None:
            errors.append(f"host.topology: {why}")
        else:
            nvme = host.get("nvme_read_bps", 2.7e9)
            if (why := _POS(nvme)) is not None:
                errors.append(f"host.nvme_read_bps: {why}")
            else:
                try:
                    spec = load_nccl_xml(_resolve(host["topology"], base), str(gpu),
                                         nvme_read_bps=float(nvme))
                except (TopologyError, FileNotFoundError) as e:
                    errors.append(f"host.topology: {e}")
    else:
        name = host.get("preset", "p4d")
        if (why := _choice(*PRESETS)(name)) is not None:
            errors.append(f"host.preset: {why}")
        else:
            spec = preset(name)
    times = []
    for key, default in (("restart_s", 20.0), ("reconfig_s", 18.0)):
        v = host.get(key, default)
        if (why := _NONNEG(v)) is not None:
            errors.append(f"host.{key}: {why}")
            v = default
        times.append(float(v))
    layout: dict[int, tuple[str, ...]] = {}
    if "mig" in host and spec is not None:
        raw = host["mig"]
        gpus = [g.index for g in spec.topology.gpus]
        per_gpu: dict[str, Any] = (
            {str(g): raw for g in gpus} if isinstance(raw, list) else _table(raw, "host.mig",
                                                                            errors))
        for key, profiles in per_gpu.items():
            path = "host.mig" if isinstance(raw, list) else f"host.mig.{key}"
            if not key.isdigit() or int(key) not in gpus:
                errors.append(f"{path}: no GPU {key!r} on this host")
                continue
            if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
                errors.append(f"{path}: expected a list of MIG profile names")
                continue
            g = int(key)
            ms = MigState(g, gpu_model(spec.gpu_models[g]), enabled=True)
            for i, prof in enumerate(profiles):
                try:
                    ms.first_fit(prof)
                except KeyError as e:
                    errors.append(f"{path}[{i}]: {e.args[0]}")
                except Exception as e:  # LeverError: no free placement
                    errors.append(f"{path}[{i}]: {e}")
            layout[g] = tuple(profiles)
    return spec, layout, times[0], times[1]


def _parse_arrivals(t: dict[str, Any], p: str, base: Path | None, errors: list[str],
                    out: dict[str, Any]) -> None:
    arr = _table(t.get("arrivals", {"rate_rps": 10.0}), f"{p}.arrivals", errors)
    _unknown(arr, {"rate_rps", "trace", "format", "scale"}, f"{p}.arrivals.", errors)
    if "trace" in arr:
        if "rate_rps" in arr:
            errors.append(f"{p}.arrivals: give either rate_rps or trace, not both")
        fmt = arr.get("format", "azure")
        scale = arr.get("scale", 1.0)
        bad = False
        for key, val, check in (("format", fmt, _choice("azure", "mooncake")),
                                ("scale", scale, _POS), ("trace", arr["trace"], _string)):
            if (why := check(val)) is not None:
                errors.append(f"{p}.arrivals.{key}: {why}")
                bad = True
        if not bad:
            try:
                trace: Trace = load_trace(_resolve(arr["trace"], base), fmt, float(scale))
            except (TraceError, FileNotFoundError) as e:
                errors.append(f"{p}.arrivals.trace: {e}")
            else:
                out["trace"] = trace
    else:
        rate: Any = arr.get("rate_rps")
        if (why := _NONNEG(rate)) is not None:
            errors.append(f"{p}.arrivals.rate_rps: {why}")
        else:
            out["rate_rps"] = float(rate)


def _parse_tenant(t: dict[str, Any], p: str, base: Path | None,
                  errors: list[str]) -> TenantSpec | None:
    allowed = set(_TENANT_KEYS) - {"rate_rps"} | {"name", "kind", "class", "slo", "arrivals"}
    _unknown(t, allowed, f"{p}.", errors)
    before = len(errors)
    name = t.get("name")
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        errors.append(f"{p}.name: must match [a-z0-9_-]{{1,63}}, got {name!r}")
    kind: Any = t.get("kind")
    if (why := _choice("inference", "etl", "training")(kind)) is not None:
        errors.append(f"{p}.kind: {why}")
        return None
    cls = t.get("class", "latency" if kind == "inference" else "batch")
    if (why := _choice("latency", "batch")(cls)) is not None:
        errors.append(f"{p}.class: {why}")
    out: dict[str, Any] = dict(_KIND_DEFAULTS[kind])
    for key, (check, fname) in _TENANT_KEYS.items():
        if key in t:
            if (why := check(t[key])) is not None:
                errors.append(f"{p}.{key}: {why}")
            else:
                out[fname] = float(t[key]) if fname in _FLOAT_FIELDS else t[key]
    slo = _table(t.get("slo", {}), f"{p}.slo", errors)
    _unknown(slo, {"ttft_p99_ms", "tpot_p99_ms"}, f"{p}.slo.", errors)
    for key in ("ttft_p99_ms", "tpot_p99_ms"):
        if key in slo:
            if (why := _POS(slo[key])) is not None:
                errors.append(f"{p}.slo.{key}: {why}")
            else:
                out[key] = float(slo[key])
    if cls == "latency" and "ttft_p99_ms" not in out and "tpot_p99_ms" not in out:
        errors.append(f"{p}.slo: a latency tenant needs ttft_p99_ms or tpot_p99_ms")
    if kind == "inference":
        _parse_arrivals(t, p, base, errors, out)
    elif "arrivals" in t:
        errors.append(f"{p}.arrivals: only inference tenants have arrivals")
    if len(errors) > before:
        return None
    return TenantSpec(name=name, kind=kind, tenant_class=cls, **out)  # type: ignore[arg-type]


def _parse_events(data: dict[str, Any], names: set[str], errors: list[str]) -> list[EventSpec]:
    raw = data.get("event", [])
    if not isinstance(raw, list):
        errors.append("event: expected an array of tables ([[event]])")
        return []
    out: list[EventSpec] = []
    for i, ev in enumerate(raw):
        p = f"event[{i}]"
        ev = _table(ev, p, errors)
        before = len(errors)
        at: Any = ev.get("at_s")
        if (why := _NONNEG(at)) is not None:
            errors.append(f"{p}.at_s: {why}")
        tenant = ev.get("tenant")
        if not isinstance(tenant, str):
            errors.append(f"{p}.tenant: expected a tenant name, got {tenant!r:.40}")
        elif tenant not in names:
            errors.append(f"{p}.tenant: no tenant named {tenant!r}")
        action = ev.get("action")
        if not isinstance(action, str):
            errors.append(f"{p}.action: expected one of 'start', 'stop', 'set'")
        elif (why := _choice("start", "stop", "set")(action)) is not None:
            errors.append(f"{p}.action: {why}")
        extra = {k: v for k, v in ev.items() if k not in ("at_s", "tenant", "action")}
        values: dict[str, object] = {}
        if action == "set":
            if not extra:
                errors.append(f"{p}: a set event needs at least one tenant field")
            for k, v in extra.items():
                if k not in SETTABLE:
                    errors.append(f"{p}.{k}: not settable (settable: {', '.join(SETTABLE)})")
                    continue
                check, fname = _TENANT_KEYS[k]
                if (why := check(v)) is not None:
                    errors.append(f"{p}.{k}: {why}")
                else:
                    values[fname] = float(v) if fname in _FLOAT_FIELDS else v
        else:
            _unknown(extra, set(), f"{p}.", errors)
        if len(errors) == before:
            out.append(EventSpec(float(at), str(tenant), str(action), values or None))
    return out


def parse(data: dict[str, Any], *, base: Path | None = None, source: str = "",
          seed: int | None = None, seconds: float | None = None) -> Scenario:
    errors: list[str] = []
    _unknown(data, {"scenario", "host", "tenant", "event"}, "", errors)
    sc = _table(data.get("scenario", {}), "scenario", errors)
    _unknown(sc, {"name", "seconds", "seed", "description"}, "scenario.", errors)
    name = sc.get("name", Path(source).stem if source else "scenario")
    if (why := _string(name)) is not None:
        errors.append(f"scenario.name: {why}")
    secs = sc.get("seconds", 600.0) if seconds is None else seconds
    if (why := _POS(secs)) is not None:
        errors.append(f"scenario.seconds: {why}")
    sd = sc.get("seed", 1) if seed is None else seed
    if (why := _number(0, integer=True)(sd)) is not None:
        errors.append(f"scenario.seed: {why}")
    desc = sc.get("description", "")
    spec, layout, restart_s, reconfig_s = _parse_host(data, base, errors)
    raw_tenants = data.get("tenant", [])
    tenants: list[TenantSpec] = []
    if not isinstance(raw_tenants, list) or not raw_tenants:
        errors.append("tenant: at least one [[tenant]] is needed")
        raw_tenants = []
    seen: set[str] = set()
    for i, t in enumerate(raw_tenants):
        ts = _parse_tenant(_table(t, f"tenant[{i}]", errors), f"tenant[{i}]", base, errors)
        if ts is None:
            continue
        if ts.name in seen:
            errors.append(f"tenant[{i}].name: duplicate tenant name {ts.name!r}")
        seen.add(ts.name)
        tenants.append(ts)
    events = _parse_events(data, seen, errors)
    if errors or spec is None:
        raise ScenarioError(errors or ["host: no usable host description"])
    scenario = Scenario(
        name=str(name), seconds=float(secs), seed=int(sd), host_spec=spec,
        tenants=tuple(tenants), events=tuple(events), mig_layout=layout,
        restart_s=restart_s, reconfig_s=reconfig_s, description=str(desc), source=source,
    )
    try:  # placement, memory fit and devices: the host's own checks
        scenario.build_host().close()
    except ValueError as e:
        idx = next((i for i, t in enumerate(tenants) if str(e).startswith(f"tenant {t.name}:")),
                   None)
        raise ScenarioError([f"tenant[{idx}]: {e}" if idx is not None else str(e)]) from None
    return scenario


def loads(text: str, *, base: Path | None = None, source: str = "", seed: int | None = None,
          seconds: float | None = None) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError([f"{source or 'scenario'}: TOML syntax: {e}"]) from None
    return parse(data, base=base, source=source, seed=seed, seconds=seconds)


def load_scenario(name_or_path: str, *, seed: int | None = None,
                  seconds: float | None = None) -> Scenario:
    """A built-in scenario by name, or a scenario file."""
    if name_or_path in BUILTIN_SCENARIOS:
        res = resources.files("gpuguardd.sim").joinpath(f"scenarios/{name_or_path}.toml")
        return loads(res.read_text("utf-8"), base=None, source=name_or_path, seed=seed,
                     seconds=seconds)
    p = Path(name_or_path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([
            f"{p}: no such scenario file (built-in: {', '.join(BUILTIN_SCENARIOS)})"
        ]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError([f"{p}: cannot read: {e}"]) from None
    return loads(text, base=p.resolve().parent, source=str(p), seed=seed, seconds=seconds)
