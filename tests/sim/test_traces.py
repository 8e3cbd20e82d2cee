"""Trace loaders: Azure CSV and Mooncake JSONL, with time scaling and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpuguardd.sim.traces import MOONCAKE_BLOCK_TOKENS, TraceError, load_azure, load_mooncake

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "azure-llm-2023"
CONV = SHARED / "AzureLLMInferenceTrace_conv.csv"
CODE = SHARED / "AzureLLMInferenceTrace_code.csv"

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2224670,879,55
2023-11-16 18:15:47.0000000,91,16
"""


def test_azure_fixture(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(AZURE)
    tr = load_azure(f)
    assert len(tr) == 4
    np.testing.assert_allclose(tr.times_s, [0.0, 0.31941, 4.314579, 4.541877], atol=1e-6)
    assert tr.prompt_tokens.tolist() == [374, 91, 396, 879]  # sorted by time
    assert tr.output_tokens.tolist() == [44, 16, 109, 55]
    assert (tr.cached_tokens == -1).all()
    fast = load_azure(f, scale=2.0)
    np.testing.assert_allclose(fast.times_s, tr.times_s / 2)


@pytest.mark.parametrize(("text", "match"), [
    ("time,a,b\n", "expected header"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374\n", ":2: expected 3"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,374,44\n", ":2: TIMESTAMP"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,x,44\n", "not an integer"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,0,44\n", "must be > 0"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
])
def test_azure_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(TraceError, match=match):
        load_azure(f)


def test_mooncake_fixture_prefix_hits(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 1500, "output_length": 10, "hash_ids": [1, 2, 3]},
        {"timestamp": 500, "input_length": 1200, "output_length": 20, "hash_ids": [1, 2, 9]},
        {"timestamp": 1000, "input_length": 600, "output_length": 5, "hash_ids": [7, 1]},
        {"timestamp": 2000, "input_length": 1024, "output_length": 5, "hash_ids": [1, 2]},
    ]
    f = tmp_path / "m.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tr = load_mooncake(f)
    np.testing.assert_allclose(tr.times_s, [0.0, 0.5, 1.0, 2.0])
    b = MOONCAKE_BLOCK_TOKENS
    # first sight: nothing cached; leading run of seen blocks; a fully cached prompt still
    # computes its last token
    assert tr.cached_tokens.tolist() == [0, 2 * b, 0, 1023]
    np.testing.assert_allclose(load_mooncake(f, scale=4.0).times_s, tr.times_s / 4)


@pytest.mark.parametrize(("line", "match"), [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"timestamp": 1, "input_length": 5}', "missing 'output_length'"),
    ('{"timestamp": -1, "input_length": 5, "output_length": 1}', "timestamp"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": "x"}', "hash_ids"),
])
def test_mooncake_errors(tmp_path: Path, line: str, match: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n' + line + "\n")
    with pytest.raises(TraceError, match=f":2: .*{match}"):
        load_mooncake(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_azure(tmp_path / "none.csv")
    with pytest.raises(TraceError, match="no such file"):
        load_mooncake(tmp_path / "none.jsonl")


@pytest.mark.skipif(not CONV.is_file(), reason=f"shared data absent: {CONV}")
def test_real_azure_conv_trace() -> None:
    tr = load_azure(CONV)
    assert len(tr) == 19366
    assert 3000 < tr.duration_s < 3700  # about one hour
    assert np.median(tr.prompt_tokens) == 1020 and tr.prompt_tokens.max() == 14050
    assert np.median(tr.output_tokens) == 129
    assert np.all(np.diff(tr.times_s) >= 0)


@pytest.mark.skipif(not CODE.is_file(), reason=f"shared data absent: {CODE}")
def test_real_azure_code_trace_scaled() -> None:
    tr = load_azure(CODE, scale=2.0)
    assert len(tr) == 8819
    assert tr.duration_s < 1900  # twice the request rate: half the hour
    assert np.median(tr.prompt_tokens) == 1469 and np.median(tr.output_tokens) == 13
