from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpuguardd.cli import main
from gpuguardd.model.llm import BUILTIN
from gpuguardd.vgpu import synthetic
from gpuguardd.vgpu.profile_data import to_csv

from .conftest import A100, EXAMPLE, FIXTURES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_allocate_example_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "plan.json"
    code, out, _ = run(capsys, "allocate", "--tenants", str(EXAMPLE), "--json", str(out_json))
    assert code == 0
    assert "qwen3-4b" in out and "saving" in out and "oracle" in out
    res = json.loads(out_json.read_text())
    for key in ("tenants", "total_share_pct", "static_total_share_pct", "saving_vs_static",
                "oracle_total_share_pct", "gap_to_oracle", "feasible", "wall_seconds"):
        assert key in res
    t = res["tenants"]["qwen3-4b"]
    for key in ("gpu", "share_pct", "memory_bytes", "predicted_ttft_p99_ms",
                "predicted_tpot_p99_ms"):
        assert key in t
    assert res["feasible"] is True and res["saving_vs_static"] >= 0.2
    assert 0 <= res["gap_to_oracle"] <= 0.05


def test_allocate_no_oracle_and_gpus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "p.json"
    code, _, _ = run(capsys, "allocate", "--tenants", str(EXAMPLE), "--no-oracle", "--gpus", "1",
                     "--json", str(out_json))
    res = json.loads(out_json.read_text())
    assert code == 0 and res["gpus"] == 1 and res["oracle_total_share_pct"] is None
    assert not res["feasible"]  # the mix does not fit on one GPU
    bad = [n for n, t in res["tenants"].items() if not t["feasible"]]
    assert bad and all(res["tenants"][n]["reason"] for n in bad)


BAD = """
[[gpu]]
model = "A100-SXM4-80GB"
count = 0
[[tenant]]
name = "Bad Name"
model = "Qwen9"
demand_rps = -1
slo = { ttft_p99_ms = 100.0, tpot_ms = 3 }
"""


def test_allocate_bad_file_exits_2_with_key_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(BAD)
    code, out, err = run(capsys, "allocate", "--tenants", str(f))
    assert code == 2 and out == ""
    assert "gpu[0].count: must be >= 1" in err
    assert "tenant[0].demand_rps: must be >= 0.0" in err
    assert "tenant[0].slo.tpot_ms: unknown key" in err
    assert "Traceback" not in err
    f.write_text(BAD.replace("count = 0", "count = 1").replace("-1", "1").replace(
        ", tpot_ms = 3", ""))
    code, _, err = run(capsys, "allocate", "--tenants", str(f))
    assert code == 2 and "tenant[0].name" in err and "tenant[0].model: unknown built-in" in err
    f.write_text("[[gpu]\n")
    code, _, err = run(capsys, "allocate", "--tenants", str(f))
    assert code == 2 and "TOML syntax" in err
    code, _, err = run(capsys, "allocate", "--tenants", str(tmp_path / "missing.toml"))
    assert code == 2 and "no such file" in err


def test_allocate_with_model_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cfg.json").write_text((FIXTURES / "Qwen3-1.7B.json").read_text())
    f = tmp_path / "t.toml"
    f.write_text('[[gpu]]\nmodel = "A100-SXM4-80GB"\n[[tenant]]\nname = "x"\n'
                 'model_config = "cfg.json"\ndemand_rps = 1.0\nslo = { ttft_p99_ms = 400.0 }\n')
    code, out, _ = run(capsys, "allocate", "--tenants", str(f))
    assert code == 0 and "feasible: true" in out
    f.write_text(f.read_text().replace("cfg.json", "nope.json"))
    code, _, err = run(capsys, "allocate", "--tenants", str(f))
    assert code == 2 and "tenant[0].model_config" in err


def test_fit_then_allocate_with_fitted_predictors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [r for m in ("Qwen3-4B", "Qwen3-0.6B")
            for r in synthetic.profile(BUILTIN[m], A100, np.random.default_rng(4))]
    csv = tmp_path / "p.csv"
    csv.write_text(to_csv(rows))
    model = tmp_path / "m.json"
    code, out, _ = run(capsys, "fit", "--data", str(csv), "--out", str(model))
    assert code == 0 and "Qwen3-4B" in out and "Qwen3-0.6B" in out
    data = json.loads(model.read_text())
    assert {p["model"] for p in data["predictors"]} == {"Qwen3-4B", "Qwen3-0.6B"}
    assert all(p["quality"]["ttft"]["r2"] > 0.9 for p in data["predictors"])
    plan = tmp_path / "plan.json"
    code, _, _ = run(capsys, "allocate", "--tenants", str(EXAMPLE), "--predictors", str(model),
                     "--json", str(plan))
    src = json.loads(plan.read_text())["predictors"]
    assert code == 0 and src["Qwen3-4B|A100-SXM4-80GB"] == "fitted"
    assert src["Qwen3-8B|A100-SXM4-80GB"] == "synthetic"


def test_fit_bad_csv_exits_2_naming_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("model,gpu,batch_size,share_pct,colocated,sm_activity_others,"
                   "dram_activity_others,ttft_ms,tpot_ms\nm,g,1,50,0,0,0,10,3\nm,g,1,x,0,0,0,10,3\n")
    code, _, err = run(capsys, "fit", "--data", str(csv), "--out", str(tmp_path / "o.json"))
    assert code == 2 and "line 3, column 'share_pct'" in err and "Traceback" not in err
    csv.write_text(csv.read_text().replace(",x,", ",50,"))
    code, _, err = run(capsys, "fit", "--data", str(csv), "--out", str(tmp_path / "o.json"))
    assert code == 2 and "training rows" in err


def test_allocate_a_shorter_slo_window_needs_more_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One window's p99 is a noisier sample the fewer requests it holds: the plan for SLOs held
    over 10-minute windows carries a larger margin than the default hour."""
    totals = {}
    for window in (600, 3600):
        f = tmp_path / f"w{window}.toml"
        f.write_text(f"slo_window_s = {window}\n" + EXAMPLE.read_text())
        out_json = tmp_path / f"w{window}.json"
        code, _, err = run(capsys, "allocate", "--tenants", str(f), "--json", str(out_json),
                           "--no-oracle")
        assert code == 0, err
        totals[window] = json.loads(out_json.read_text())["total_share_pct"]
    assert totals[600] > totals[3600]
    f = tmp_path / "bad.toml"
    f.write_text("slo_confidence = 1.5\n" + EXAMPLE.read_text())
    code, _, err = run(capsys, "allocate", "--tenants", str(f))
    assert code == 2 and "slo_confidence" in err and "Traceback" not in err
