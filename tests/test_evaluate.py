"""The evaluation layer end to end on the simulator, and the regression guard of issue 7:
ratios between policies on the same seed, never absolute times."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuguardd.evaluate import ablation
from gpuguardd.evaluate.run import simulate
from gpuguardd.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def short_runs():
    # 0-240 s of noisy-neighbor: T2 (ETL) runs from 60 s to 180 s
    return {p: simulate("noisy-neighbor", policy=p, seconds=240, seed=3)
            for p in ("static", "full")}


def test_result_document_follows_the_contract(short_runs):
    r = short_runs["full"]
    assert {"scenario", "policy", "seconds", "seed", "tenants", "actions", "mig_reconfigs",
            "level_changes", "wall_seconds"} <= set(r)
    t1 = r["tenants"]["t1"]
    for key in ("ttft_p50_ms", "ttft_p99_ms", "ttft_p999_ms", "tpot_p99_ms",
                "slo_violation_rate", "requests", "completed", "throughput_rps", "downtime_s"):
        assert key in t1
    assert "throughput" in r["tenants"]["t2"] and "throughput_bytes_per_s" in r["tenants"]["t2"]
    json.dumps(r)


def test_regression_guard_full_beats_static_on_violations(short_runs):
    static, full = short_runs["static"], short_runs["full"]
    assert static["tenants"]["t1"]["slo_violation_rate"] > 0.1  # the interference is there
    assert (full["tenants"]["t1"]["slo_violation_rate"]
            < 0.75 * static["tenants"]["t1"]["slo_violation_rate"])
    assert sum(full["actions"].values()) > 0 and sum(static["actions"].values()) == 0


def test_same_seed_same_result():
    a = simulate("noisy-neighbor", policy="full", seconds=90, seed=7)
    b = simulate("noisy-neighbor", policy="full", seconds=90, seed=7)
    a.pop("wall_seconds"), b.pop("wall_seconds")
    assert a == b


def test_alone_stops_every_batch_tenant():
    sc = ablation.alone(load_scenario("noisy-neighbor"))
    batch = {t.name for t in sc.tenants if t.tenant_class != "latency"}
    assert {(e.tenant, e.action) for e in sc.events if e.tenant in batch} == \
        {(name, "stop") for name in batch}


def test_summary_ratios_and_ci():
    runs = [
        {"policy": p, "seed": s, "seconds": 3600, "mig_reconfigs": 0, "level_changes": 0,
         "actions": {"io_throttle": 1},
         "tenants": {"t1": {"ttft_p99_ms": v, "slo_violation_rate": v / 100},
                     "t2": {"throughput": 2.0 if p == "static" else 1.0}}}
        for p, s, v in [("static", 1, 20.0), ("static", 2, 22.0), ("full", 1, 10.0),
                        ("full", 2, 12.0)]
    ]
    table = ablation.summarise(runs, ["t1"], ["t2"])
    assert table["full"]["ttft_p99_ms"][0] == pytest.approx(11.0)
    assert table["full"]["ttft_p99_ms"][1] > 0  # two seeds: a real interval
    assert table["full"]["p99_vs_static"] == pytest.approx(0.5238, rel=1e-3)
    assert table["full"]["batch_throughput_norm"][0] == pytest.approx(0.5)
    text = ablation.format_table("x", table, ["t1"], 2)
    assert "full" in text and "0.52" in text


def test_evaluate_cli_table_json_and_plots(tmp_path):
    out = tmp_path / "eval.json"
    r = subprocess.run(
        [sys.executable, "-m", "gpuguardd", "evaluate", "--scenario", "noisy-neighbor",
         "--policies", "static,guards", "--seeds", "1", "--seconds", "120", "--json", str(out),
         "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "static" in r.stdout and "guards" in r.stdout and "alone" in r.stdout
    doc = json.loads(out.read_text())
    assert set(doc["table"]) == {"static", "guards", "alone"}
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "noisy-neighbor-cdf.png" in pngs and "noisy-neighbor-timeline-guards.png" in pngs
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_bad_policy_and_scenario_exit_2():
    for argv in (["evaluate", "--scenario", "noisy-neighbor", "--policies", "yolo"],
                 ["simulate", "--scenario", "no-such-scenario"]):
        r = subprocess.run([sys.executable, "-m", "gpuguardd", *argv], capture_output=True,
                           text=True, cwd=ROOT, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
