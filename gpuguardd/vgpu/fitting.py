"""Fitting TTFT/TPOT predictors (:mod:`gpuguardd.vgpu.predictor`) on profile rows: bounded
non-linear least squares (``scipy.optimize.least_squares``) on log residuals, R² and MAPE on
held-out rows. Offline only (``gpuguardd fit``, ``allocate``, benchmarks, the generator of the
built-in predictors): the daemon evaluates fitted predictors without numpy or scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuguardd.vgpu.predictor import (
    DEFAULT_PCIE_BPS,
    FitQuality,
    Predictor,
    PredictorError,
    tpot_form,
    ttft_form,
)
from gpuguardd.vgpu.profile_data import ProfileRow

FloatArray = npt.NDArray[np.float64]



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
