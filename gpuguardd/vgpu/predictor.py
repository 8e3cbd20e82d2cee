"""TTFT and TPOT predictors for one (model, GPU), in the iGniter / paper A family.

Prefill is compute-bound; under HAMi time slicing a share ``f`` (0..1) gives the tenant ``f`` of
the SMs' time, so the prefill time scales like 1/f; co-runners add contention (cache, scheduling):

    TTFT_ms = (k1·x² + k2·x + k3) / (f + k4) · (1 + k5·u) + k6 + pcie_ms
    x       = b · prompt_tokens / 1000        (kilo-tokens prefilled by one batch)
    u       = co-runners' summed SM activity (fraction of the GPU's time their SMs are busy)
    pcie_ms = b · (4 · prompt_tokens + input_bytes) / pcie_bps · 1000   (known, not fitted)

k1 (quadratic) absorbs attention's T² term and the drop of efficiency at large batches, k4 the
slice-quantum overhead at small shares, k6 fixed host-side time (tokeniser, scheduler).

Decode is memory-bound: one step reads the weights and every sequence's KV cache; co-runners'
DRAM traffic takes bandwidth:

    TPOT_ms = (m1·y + m2·b + m3) / (f + m4) · (1 + m5·d) + m6
    y       = b · (prompt_tokens + output_tokens / 2) / 1000   (kilo-tokens of KV read per step)
    d       = co-runners' summed DRAM activity (fraction of peak bandwidth)

m3 is the weight read, m1 the KV read, m2 the per-sequence compute, m6 the per-step host time.

Both are fitted (:mod:`gpuguardd.vgpu.fitting`) by ``scipy.optimize.least_squares`` on log
residuals (latencies span 10x across shares, so relative error is the right loss) with every
parameter bounded to be >= 0 and k4, m4 <= 1. The p99 prediction is the mean prediction times
``tail`` = the 99th percentile of observed / predicted on the training rows (>= 1), which
carries the run-to-run noise into the SLO check.

This module evaluates predictors and reads/writes their JSON in pure Python (floats in, floats
out; numpy arrays work too): the daemon evaluates them without loading numpy or scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
    ArrayLike = float | FloatArray

TTFT_NAMES = ("k1", "k2", "k3", "k4", "k5", "k6")
TPOT_NAMES = ("m1", "m2", "m3", "m4", "m5", "m6")
FORMAT_VERSION = 1
DEFAULT_PCIE_BPS = 12.5e9


class PredictorError(ValueError):
    pass


def ttft_form(p: Sequence[float] | FloatArray, x: ArrayLike, f: ArrayLike, u: ArrayLike) -> Any:
    k1, k2, k3, k4, k5, k6 = p
    return (k1 * x * x + k2 * x + k3) / (f + k4) * (1.0 + k5 * u) + k6


def tpot_form(
    p: Sequence[float] | FloatArray, y: ArrayLike, b: ArrayLike, f: ArrayLike, d: ArrayLike
) -> Any:
    m1, m2, m3, m4, m5, m6 = p
    return (m1 * y + m2 * b + m3) / (f + m4) * (1.0 + m5 * d) + m6


@dataclass(frozen=True, slots=True)
class FitQuality:
    r2: float
    mape: float  # mean absolute percentage error, fraction (0.05 = 5 %)
    rows: int


@dataclass(frozen=True, slots=True)
class Predictor:
    model: str
    gpu: str
    ttft: tuple[float, ...]
    tpot: tuple[float, ...]
    ttft_tail: float = 1.0
    tpot_tail: float = 1.0
    pcie_bps: float = DEFAULT_PCIE_BPS
    quality: dict[str, FitQuality] = field(default_factory=dict)

    def ttft_ms(
        self,
        batch: ArrayLike,
        share: ArrayLike,
        sm_others: ArrayLike,
        prompt_tokens: ArrayLike,
        input_bytes: ArrayLike = 0.0,
    ) -> Any:
        """Mean TTFT, ms. ``share`` is a fraction (0..1]."""
        x = batch * prompt_tokens / 1000.0
        pcie = batch * (4.0 * prompt_tokens + input_bytes) / self.pcie_bps * 1000.0
        return ttft_form(self.ttft, x, share, sm_others) + pcie

    def tpot_ms(
        self,
        batch: ArrayLike,
        share: ArrayLike,
        dram_others: ArrayLike,
        prompt_tokens: ArrayLike,
        output_tokens: ArrayLike,
    ) -> Any:
        """Mean TPOT, ms."""
        y = batch * (prompt_tokens + output_tokens / 2.0) / 1000.0
        return tpot_form(self.tpot, y, batch, share, dram_others)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpu": self.gpu,
            "ttft": dict(zip(TTFT_NAMES, self.ttft, strict=True)),
            "tpot": dict(zip(TPOT_NAMES, self.tpot, strict=True)),
            "ttft_tail": self.ttft_tail,
            "tpot_tail": self.tpot_tail,
            "pcie_bps": self.pcie_bps,
            "quality": {
                k: {"r2": q.r2, "mape": q.mape, "rows": q.rows} for k, q in self.quality.items()
            },
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any], where: str = "predictor") -> Predictor:
        try:
            ttft = tuple(float(d["ttft"][n]) for n in TTFT_NAMES)
            tpot = tuple(float(d["tpot"][n]) for n in TPOT_NAMES)
            quality = {
                str(k): FitQuality(float(q["r2"]), float(q["mape"]), int(q["rows"]))
                for k, q in dict(d.get("quality", {})).items()
            }
            pred = Predictor(
                model=str(d["model"]),
                gpu=str(d["gpu"]),
                ttft=ttft,
                tpot=tpot,
                ttft_tail=float(d.get("ttft_tail", 1.0)),
                tpot_tail=float(d.get("tpot_tail", 1.0)),
                pcie_bps=float(d.get("pcie_bps", DEFAULT_PCIE_BPS)),
                quality=quality,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PredictorError(
                f"{where}: malformed predictor ({type(e).__name__}: {e})") from None
        if not all(math.isfinite(v) and v >= 0 for v in (*ttft, *tpot)):
            raise PredictorError(f"{where}: parameters must be finite and >= 0")
        if pred.ttft_tail < 1 or pred.tpot_tail < 1 or pred.pcie_bps <= 0:
            raise PredictorError(f"{where}: tails must be >= 1 and pcie_bps > 0")
        return pred


def predictors_to_json(preds: Sequence[Predictor]) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "predictors": [p.to_dict() for p in preds]}


def predictors_from_json(data: Mapping[str, Any]) -> dict[tuple[str, str], Predictor]:
    if data.get("version") != FORMAT_VERSION:
        raise PredictorError(f"version: expected {FORMAT_VERSION}, got {data.get('version')!r}")
    items = data.get("predictors")
    if not isinstance(items, list):
        raise PredictorError("predictors: expected a list")
    out: dict[tuple[str, str], Predictor] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise PredictorError(f"predictors[{i}]: expected an object")
        p = Predictor.from_dict(item, f"predictors[{i}]")
        out[(p.model, p.gpu)] = p
    return out


