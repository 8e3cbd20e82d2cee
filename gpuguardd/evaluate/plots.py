"""Plots for ``gpuguardd evaluate --plots DIR`` (matplotlib, PNG, headless).

1. ``<scenario>-cdf.png``: the victims' TTFT CDF per policy with the SLO line (paper B fig. 4).
2. ``<scenario>-timeline-<policy>.png``: the victim's per-second window p99 over time, with
   the antagonists' on/off periods shaded and every applied action marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cdf(results: Sequence[dict[str, Any]], victim: str, slo_ms: float | None, path: Path,
        title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    policies: dict[str, list[float]] = {}
    for r in results:
        policies.setdefault(r["policy"], []).extend(r["detail"]["ttft_ms"][victim])
    for policy, xs in policies.items():
        data = np.sort(np.asarray(xs))
        if data.size == 0:
            continue
        y = np.arange(1, data.size + 1) / data.size
        ax.plot(data, y, label=f"{policy} (p99 {np.percentile(data, 99):.1f} ms)",
                linestyle="--" if policy == "alone" else "-")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="red", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set_ylim(0.9, 1.0005)
    ax.set_xlabel(f"{victim} TTFT (ms, log)")
    ax.set_ylabel("CDF (tail: 0.90 - 1.00)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(result: dict[str, Any], victim: str, slo_ms: float | None, path: Path) -> Path:
    plt = _pyplot()
    detail = result["detail"]
    series = detail["timeline"]["ttft_p99_ms"][victim]
    secs = np.arange(len(series))
    vals = np.array([np.nan if v is None else v for v in series], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(secs, vals, linewidth=0.8, color="tab:blue", label=f"{victim} 1-s window p99")
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", linewidth=1, label=f"SLO {slo_ms:g} ms")
    # antagonists on/off from the scenario events
    on: dict[str, float | None] = {}
    colours = ["tab:orange", "tab:green", "tab:purple", "tab:brown"]
    spans: dict[str, list[tuple[float, float]]] = {}
    for ev in sorted(detail["events"], key=lambda e: e["t"]):
        if ev["tenant"] == victim or ev["action"] not in ("start", "stop"):
            continue
        if ev["action"] == "start":
            on[ev["tenant"]] = ev["t"]
        elif on.get(ev["tenant"]) is not None:
            spans.setdefault(ev["tenant"], []).append((on[ev["tenant"]] or 0.0, ev["t"]))
            on[ev["tenant"]] = None
        else:
            on[ev["tenant"]] = None
    for name, start in on.items():
        if start is not None:
            spans.setdefault(name, []).append((start, result["seconds"]))
    for i, (name, ranges) in enumerate(sorted(spans.items())):
        for j, (a, b) in enumerate(ranges):
            ax.axvspan(a, b, color=colours[i % len(colours)], alpha=0.12,
                       label=f"{name} on" if j == 0 else None)
    top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
    for k, act in enumerate(result["action_log"]):
        ax.axvline(act["t"], color="black", linewidth=0.6, alpha=0.6)
        ax.annotate(f"{act['kind']} {act['target']}", (act["t"], top),
                    rotation=90, fontsize=6, va="top", ha="right",
                    xytext=(-1, -2 - 0 * k), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("TTFT p99 (ms, log)")
    ax.set_title(f"{result['scenario']} - policy {result['policy']} - seed {result['seed']}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
