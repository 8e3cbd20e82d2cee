from __future__ import annotations

import numpy as np
import pytest

from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import synthetic
from gpuguardd.vgpu.profile_data import ProfileCsvError, parse_csv, to_csv

from .conftest import A100

HEADER = ("model,gpu,batch_size,share_pct,colocated,sm_activity_others,dram_activity_others,"
          "ttft_ms,tpot_ms")


def test_round_trip() -> None:
    rows = synthetic.profile(BUILTIN["Qwen3-0.6B"], A100, np.random.default_rng(0),
                             synthetic.Sweep(batches=(1, 4), shares_pct=(50, 100),
                                             prompt_tokens=(512,), colocated=(0, 2)))
    back = parse_csv(to_csv(rows))
    assert len(back) == len(rows) == 8
    assert back[3].batch_size == rows[3].batch_size
    assert back[3].ttft_ms == pytest.approx(rows[3].ttft_ms, rel=1e-5)


def test_optional_columns_default() -> None:
    rows = parse_csv(HEADER + "\nm,g,2,50,0,0,0,10.5,3.2\n")
    assert rows[0].prompt_tokens == 512 and rows[0].output_tokens == 128


@pytest.mark.parametrize(("body", "message"), [
    ("m,g,two,50,0,0,0,10,3", "line 2, column 'batch_size': expected an integer"),
    ("m,g,1,50,0,0,0,10,3\nm,g,1,150,0,0,0,10,3", "line 3, column 'share_pct': must be <= 100"),
    ("m,g,1,50,0,0,0,0,3", "line 2, column 'ttft_ms': must be > 0"),
    ("m,g,1,50,0,-1,0,10,3", "line 2, column 'sm_activity_others': must be >= 0"),
    ("m,g,1,50,0,0,0,nan,3", "line 2, column 'ttft_ms': must be finite"),
    ("m,,1,50,0,0,0,10,3", "line 2, column 'gpu': must not be empty"),
    ("m,g,1,50,0,0,0,10", "line 2: expected 9 fields, got 8"),
])
def test_errors_name_line_and_column(body: str, message: str) -> None:
    with pytest.raises(ProfileCsvError) as e:
        parse_csv(HEADER + "\n" + body + "\n")
    assert any(message in err for err in e.value.errors), e.value.errors


def test_header_errors() -> None:
    with pytest.raises(ProfileCsvError) as e:
        parse_csv("model,gpu,batch,share_pct\n")
    text = "\n".join(e.value.errors)
    assert "column 3 ('batch'): unknown column" in text
    assert "required column 'tpot_ms' is missing" in text
    with pytest.raises(ProfileCsvError, match="empty file"):
        parse_csv("")
    with pytest.raises(ProfileCsvError, match="no data rows"):
        parse_csv(HEADER + "\n")
