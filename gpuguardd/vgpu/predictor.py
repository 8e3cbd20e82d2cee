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

Both are fitted by ``scipy.optimize.least_squares`` on log residuals (latencies span 10x across
shares, so relative error is the right loss) with every parameter bounded to be >= 0 and k4, m4
<= 1. The p99 prediction is the mean prediction times ``tail`` = the 99th percentile of observed /
predicted on the training rows (>= 1), which carries the run-to-run noise into the SLO check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuguardd.vgpu.profile_data import ProfileRow

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
        if not all(np.isfinite(v) and v >= 0 for v in (*ttft, *tpot)):
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


# -- fitting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Columns:
    b: FloatArray
    f: FloatArray
    u: FloatArray
    d: FloatArray
    p: FloatArray
    o: FloatArray
    ttft: FloatArray
    tpot: FloatArray


def _columns(rows: Sequence[ProfileRow]) -> _Columns:
    def col(name: str) -> FloatArray:
        return np.array([float(getattr(r, name)) for r in rows], dtype=np.float64)

    return _Columns(
        b=col("batch_size"),
        f=col("share_pct") / 100.0,
        u=col("sm_activity_others"),
        d=col("dram_activity_others"),
        p=col("prompt_tokens"),
        o=col("output_tokens"),
        ttft=col("ttft_ms"),
        tpot=col("tpot_ms"),
    )


def r2_score(obs: FloatArray, pred: FloatArray) -> float:
    ss_res = float(np.sum((obs - pred) ** 2))
    ss_tot = float(np.sum((obs - np.mean(obs)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def mape(obs: FloatArray, pred: FloatArray) -> float:
    return float(np.mean(np.abs(pred - obs) / obs))


_UPPER_DENOM = 1.0  # k4, m4: a share offset beyond one full GPU is not physical


def _fit_one(
    design: FloatArray, obs: FloatArray, model: Any, n_lin: int, denom_index: int
) -> FloatArray:
    """Bounded non-linear least squares on log residuals, seeded by a linear fit with the
    non-linear terms (denominator offset, contention, constant) at zero."""
    # imported here: a daemon given fitted predictors (JSON) never fits (memory footprint)
    from scipy.optimize import least_squares

    lin, *_ = np.linalg.lstsq(design, obs, rcond=None)
    lin = np.clip(lin, 1e-9, None)
    x0 = np.concatenate([lin, [0.01, 0.1, 0.01 * float(np.min(obs))]])
    lower = np.zeros(n_lin + 3)
    upper = np.full(n_lin + 3, np.inf)
    upper[denom_index] = _UPPER_DENOM

    def resid(p: FloatArray) -> FloatArray:
        pred = np.maximum(model(p), 1e-9)
        return np.asarray(np.log(pred) - np.log(obs), dtype=np.float64)

    res = least_squares(resid, x0, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
    return np.asarray(res.x, dtype=np.float64)


def _tail(obs: FloatArray, pred: FloatArray) -> float:
    return max(1.0, float(np.quantile(obs / pred, 0.99)))


def split_rows(
    rows: Sequence[ProfileRow], held_out: float, seed: int
) -> tuple[list[ProfileRow], list[ProfileRow]]:
    """Deterministic random split into (train, held-out)."""
    if not 0.0 <= held_out < 1.0:
        raise PredictorError("held_out must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = round(held_out * len(rows))
    test = [rows[i] for i in sorted(order[:n_test])]
    train = [rows[i] for i in sorted(order[n_test:])]
    return train, test


MIN_ROWS = 12


def fit(
    rows: Sequence[ProfileRow],
    *,
    held_out: float = 0.25,
    seed: int = 0,
    pcie_bps: float = DEFAULT_PCIE_BPS,
) -> Predictor:
    """Fit both predictors on the rows of one (model, GPU); quality on held-out rows."""
    keys = {(r.model, r.gpu) for r in rows}
    if len(keys) != 1:
        raise PredictorError(f"fit one (model, gpu) at a time, got {sorted(keys)}")
    train, test = split_rows(rows, held_out, seed)
    if len(train) < MIN_ROWS:
        raise PredictorError(
            f"{sorted(keys)[0]}: need >= {MIN_ROWS} training rows, got {len(train)}")
    c = _columns(train)
    x = c.b * c.p / 1000.0
    pcie = c.b * 4.0 * c.p / pcie_bps * 1000.0
    ttft_obs = np.maximum(c.ttft - pcie, 1e-6)
    k = _fit_one(
        np.column_stack([x * x / c.f, x / c.f, 1.0 / c.f]),
        ttft_obs,
        lambda p: ttft_form(p, x, c.f, c.u),
        3,
        3,
    )
    y = c.b * (c.p + c.o / 2.0) / 1000.0
    m = _fit_one(
        np.column_stack([y / c.f, c.b / c.f, 1.0 / c.f]),
        c.tpot,
        lambda p: tpot_form(p, y, c.b, c.f, c.d),
        3,
        3,
    )
    model, gpu = sorted(keys)[0]
    pred = Predictor(model, gpu, tuple(float(v) for v in k), tuple(float(v) for v in m),
                     pcie_bps=pcie_bps)
    tr_ttft, tr_tpot = _predict_rows(pred, c)
    quality: dict[str, FitQuality] = {}
    if test:
        t = _columns(test)
        te_ttft, te_tpot = _predict_rows(pred, t)
        quality = {
            "ttft": FitQuality(r2_score(t.ttft, te_ttft), mape(t.ttft, te_ttft), len(test)),
            "tpot": FitQuality(r2_score(t.tpot, te_tpot), mape(t.tpot, te_tpot), len(test)),
        }
    return Predictor(
        model, gpu, pred.ttft, pred.tpot,
        ttft_tail=_tail(c.ttft, tr_ttft), tpot_tail=_tail(c.tpot, tr_tpot),
        pcie_bps=pcie_bps, quality=quality,
    )


def _predict_rows(pred: Predictor, c: _Columns) -> tuple[FloatArray, FloatArray]:
    ttft = np.asarray(pred.ttft_ms(c.b, c.f, c.u, c.p), dtype=np.float64)
    tpot = np.asarray(pred.tpot_ms(c.b, c.f, c.d, c.p, c.o), dtype=np.float64)
    return ttft, tpot


def evaluate(pred: Predictor, rows: Sequence[ProfileRow]) -> dict[str, FitQuality]:
    c = _columns(rows)
    ttft, tpot = _predict_rows(pred, c)
    return {
        "ttft": FitQuality(r2_score(c.ttft, ttft), mape(c.ttft, ttft), len(rows)),
        "tpot": FitQuality(r2_score(c.tpot, tpot), mape(c.tpot, tpot), len(rows)),
    }
