from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import synthetic
from gpuguardd.vgpu.fitting import evaluate, fit
from gpuguardd.vgpu.predictor import (
    Predictor,
    PredictorError,
    predictors_from_json,
    predictors_to_json,
)

from .conftest import A100


@pytest.mark.parametrize("model", sorted(BUILTIN))
def test_fit_on_synthetic_profile_reaches_targets_on_held_out_rows(model: str) -> None:
    rows = synthetic.profile(BUILTIN[model], A100, np.random.default_rng(7))
    pred = fit(rows, seed=3)
    assert pred.quality["ttft"].r2 >= 0.9
    assert pred.quality["tpot"].r2 >= 0.95
    assert pred.quality["tpot"].mape < 0.1
    # a fresh profile (different noise and co-runner draws) is predicted as well
    fresh = evaluate(pred, synthetic.profile(BUILTIN[model], A100, np.random.default_rng(99)))
    assert fresh["ttft"].r2 >= 0.9 and fresh["tpot"].r2 >= 0.95


def test_fit_fails_on_garbage() -> None:
    rows = synthetic.profile(BUILTIN["Qwen3-4B"], A100, np.random.default_rng(1))
    shuffled_ttft = np.random.default_rng(2).permutation([r.ttft_ms for r in rows])
    bad = [r.__class__(**{**{f: getattr(r, f) for f in r.__slots__}, "ttft_ms": float(t)})
           for r, t in zip(rows, shuffled_ttft, strict=True)]
    assert fit(bad).quality["ttft"].r2 < 0.5


def test_json_round_trip_and_validation() -> None:
    pred = synthetic.fitted_predictor(BUILTIN["Qwen3-1.7B"], A100)
    data = json.loads(json.dumps(predictors_to_json([pred])))
    back = predictors_from_json(data)[("Qwen3-1.7B", A100.name)]
    assert back.ttft == pytest.approx(pred.ttft) and back.tpot_tail == pred.tpot_tail
    assert back.ttft_ms(4, 0.3, 0.2, 1024) == pytest.approx(pred.ttft_ms(4, 0.3, 0.2, 1024))
    bad = json.loads(json.dumps(data))
    del bad["predictors"][0]["tpot"]["m3"]
    with pytest.raises(PredictorError, match=r"predictors\[0\]"):
        predictors_from_json(bad)
    bad = json.loads(json.dumps(data))
    bad["predictors"][0]["ttft"]["k1"] = -1.0
    with pytest.raises(PredictorError, match=">= 0"):
        predictors_from_json(bad)
    with pytest.raises(PredictorError, match="version"):
        predictors_from_json({"version": 99, "predictors": []})


def test_one_group_at_a_time_and_enough_rows() -> None:
    rows = synthetic.profile(BUILTIN["Qwen3-4B"], A100, np.random.default_rng(1))
    other = synthetic.profile(BUILTIN["Qwen3-8B"], A100, np.random.default_rng(1))
    with pytest.raises(PredictorError, match="one"):
        fit(rows[:20] + other[:20])
    with pytest.raises(PredictorError, match="training rows"):
        fit(rows[:8])


PRED: Predictor = synthetic.fitted_predictor(BUILTIN["Qwen3-4B"], A100)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 32), f=st.floats(0.05, 0.95), df=st.floats(0.01, 0.05),
    u=st.floats(0, 1.2), du=st.floats(0.01, 0.5), p=st.integers(64, 4096),
)
def test_more_share_is_faster_and_more_interference_slower(
    b: int, f: float, df: float, u: float, du: float, p: int
) -> None:
    assert PRED.ttft_ms(b, f + df, u, p) < PRED.ttft_ms(b, f, u, p)
    assert PRED.tpot_ms(b, f + df, u, p, 128) < PRED.tpot_ms(b, f, u, p, 128)
    assert PRED.ttft_ms(b, f, u + du, p) >= PRED.ttft_ms(b, f, u, p)
    assert PRED.tpot_ms(b, f, u + du, p, 128) >= PRED.tpot_ms(b, f, u, p, 128)
