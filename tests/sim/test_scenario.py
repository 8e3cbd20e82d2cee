"""Scenario files: built-ins, validation with key paths, paths, events, operator view."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuguardd.config import TenantConfig
from gpuguardd.sim import BUILTIN_SCENARIOS, ScenarioError, load_scenario
from gpuguardd.sim.scenario import loads, shared_data_dir

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

MINIMAL = """
[scenario]
name = "mini"
seconds = 30
[host]
preset = "a100-pcie"
[[tenant]]
name = "llm"
kind = "inference"
model = "Qwen3-0.6B"
slo = { ttft_p99_ms = 50.0 }
arrivals = { rate_rps = 5 }
"""


def errors_of(text: str, **kw: object) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        loads(text, **kw)  # type: ignore[arg-type]
    return e.value.errors


@pytest.mark.parametrize("name", [n for n in BUILTIN_SCENARIOS if n != "azure-conv"])
def test_builtin_scenarios_load(name: str) -> None:
    sc = load_scenario(name)
    assert sc.name == name and sc.seed == 1
    assert sc.seconds == (3600 if name == "p4d-x2-hour" else 600)
    assert any(t.tenant_class == "latency" for t in sc.tenants)
    gpus = {"p4d-x2-hour": 16, "shared-gpu": 1}.get(name, 8)
    assert len(sc.host_spec.topology.gpus) == gpus


@pytest.mark.skipif(not (SHARED / "azure-llm-2023").is_dir(), reason="shared data absent")
def test_azure_conv_reads_the_shared_trace() -> None:
    sc = load_scenario("azure-conv", seconds=60)
    chat = next(t for t in sc.tenants if t.name == "chat")
    assert chat.trace is not None and len(chat.trace) == 19366


def test_shared_data_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("GPUGUARDD_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("gpuguardd.sim.scenario.__file__", str(tmp_path / "a" / "b" / "c.py"))
    with pytest.raises(ScenarioError, match=r"tenant\[0\]\.arrivals\.trace: shared data folder"):
        load_scenario("azure-conv")
    with pytest.raises(FileNotFoundError, match="GPUGUARDD_SHARED_DATA"):
        shared_data_dir()


def test_overrides_and_tenant_configs() -> None:
    sc = load_scenario("noisy-neighbor", seed=7, seconds=30)
    assert (sc.seed, sc.seconds) == (7, 30)
    cfgs = {c.name: c for c in sc.tenant_configs()}
    assert all(isinstance(c, TenantConfig) for c in cfgs.values())
    t1, t2, t3 = cfgs["t1"], cfgs["t2"], cfgs["t3"]
    assert t1.tenant_class == "latency" and t1.slo.ttft_p99_ms == 15.0 and not t1.may_restart
    assert t1.cgroup == "sim/t1" and t1.gpu is not None and t1.gpu.startswith("MIG-")
    assert t2.tenant_class == "batch" and t2.may_restart and t2.devices == ["259:0"]
    assert t3.gpu == "1"
    host = sc.build_host()
    snap = host.observe(1.0)
    assert t1.gpu == next(i.uuid for i in snap.topology.gpu(0).instances if i.gi_id == 1)


def test_validation_names_key_paths() -> None:
    text = MINIMAL + """
[[tenant]]
name = "etl"
kind = "etl"
read_bps = -1
colour = "red"
slo = { ttft_p99_ms = "fast" }
[[tenant]]
name = "Bad Name"
kind = "quantum"
[[event]]
at_s = -3
tenant = "ghost"
action = "explode"
[[event]]
at_s = 10
tenant = "etl"
action = "set"
gpu = 2
"""
    errs = errors_of(text)
    want = [
        "tenant[1].read_bps: must be > 0",
        "tenant[1].colour: unknown key",
        "tenant[1].slo.ttft_p99_ms: expected a number",
        "tenant[2].name: must match",
        "tenant[2].kind: must be one of",
        "event[0].at_s: must be >= 0",
        "event[0].tenant: no tenant named 'ghost'",
        "event[0].action: must be one of",
        "event[1].gpu: not settable",
    ]
    for w in want:
        assert any(e.startswith(w) for e in errs), (w, errs)


@pytest.mark.parametrize(("patch", "expect"), [
    (('preset = "a100-pcie"', 'preset = "dgx"'), "host.preset: must be one of"),
    (('preset = "a100-pcie"', 'preset = "a100-pcie"\nmig = ["9g.99gb"]'), "host.mig[0]: "),
    (('preset = "a100-pcie"', 'preset = "p4d"\nmig = { "9" = ["1g.5gb"] }'), "host.mig.9: no GPU"),
    (('preset = "a100-pcie"', 'preset = "p4d"\nmig = ["7g.40gb", "1g.5gb"]'),
     "host.mig[1]: GPU 0: no free placement"),
    (('arrivals = { rate_rps = 5 }', 'arrivals = { rate_rps = 5, trace = "x.csv" }'),
     "tenant[0].arrivals: give either"),
    (('arrivals = { rate_rps = 5 }', 'arrivals = { trace = "x.csv", format = "parquet" }'),
     "tenant[0].arrivals.format: must be one of"),
    (('arrivals = { rate_rps = 5 }', 'arrivals = { trace = "missing.csv" }'),
     "tenant[0].arrivals.trace: "),
    (('model = "Qwen3-0.6B"', 'model = "gpt-5"'), "tenant[0].model: must be one of"),
    (('slo = { ttft_p99_ms = 50.0 }', ''), "tenant[0].slo: a latency tenant needs"),
    (('model = "Qwen3-0.6B"', 'model = "Qwen3-0.6B"\ngpu = 3'), "tenant[0]: tenant llm: no GPU 3"),
    (('model = "Qwen3-0.6B"', 'model = "Qwen3-0.6B"\ninstance = 0'),
     "tenant[0]: tenant llm: GPU 0 is not in MIG mode"),
    (('[scenario]', '[scenario]\nspeed = 2'), "scenario.speed: unknown key"),
])
def test_more_validation_errors(patch: tuple[str, str], expect: str) -> None:
    text = MINIMAL.replace(*patch)
    errs = errors_of(text)
    assert any(e.startswith(expect) for e in errs), errs


def test_model_must_fit_its_instance() -> None:
    text = MINIMAL.replace('preset = "a100-pcie"', 'preset = "p4d"\nmig = ["1g.5gb"]').replace(
        'model = "Qwen3-0.6B"', 'model = "llama2-7b"')
    errs = errors_of(text)
    assert errs[0].startswith("tenant[0]: tenant llm: llm needs"), errs


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    assert errors_of("[scenario\n")[0].startswith("scenario: TOML syntax")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(str(tmp_path / "none.toml"))


def test_relative_trace_path_resolves_against_the_scenario_folder(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0,100,10\n2023-11-16 18:00:01.0,200,20\n")
    f = tmp_path / "sc.toml"
    f.write_text(MINIMAL.replace('arrivals = { rate_rps = 5 }',
                                 'arrivals = { trace = "traces/t.csv", scale = 2.0 }'))
    sc = load_scenario(str(f))
    llm = sc.tenants[0]
    assert llm.trace is not None and llm.trace.times_s.tolist() == [0.0, 0.5]
    host = sc.build_host()
    host.run(5.0, 1.0)
    assert host.results()["tenants"]["llm"]["completed"] == 2


def test_set_event_changes_the_workload() -> None:
    text = MINIMAL + """
[[event]]
at_s = 10
tenant = "llm"
action = "set"
rate_rps = 50.0
"""
    sc = loads(text, seconds=20)
    host = sc.build_host()
    host.run(20, 1.0)
    t, _ = host.ttft_samples("llm")
    before, after = (t < 10).sum(), (t >= 10).sum()
    assert 20 < before < 90 and 350 < after < 650


CONTRACT_EXAMPLE = """
[scenario]
name = "noisy-neighbor"
seconds = 600
seed = 1
[host]
preset = "p4d"
mig = ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
[[tenant]]
name = "t1"
kind = "inference"
class = "latency"
gpu = 0
instance = 0
slo = { ttft_p99_ms = 15.0 }
arrivals = { rate_rps = 40 }
model = "llama2-7b"
kv_offload = true
input_bytes_per_request = 0
[[tenant]]
name = "t2"
kind = "etl"
class = "batch"
gpu = 1
read_bps = 3.0e9
restartable = true
[[event]]
at_s = 120
tenant = "t2"
action = "start"
"""


def test_the_contract_example_is_checked_against_physics() -> None:
    # verbatim, Llama-2-7B (12.6 GiB of weights + KV for a few sequences) cannot run on a 1g.5gb
    errs = errors_of(CONTRACT_EXAMPLE)
    assert errs == ["tenant[0]: tenant t1: t1 needs 13.8 GiB, gpu0/gi1 offers 5.0 GiB"], errs
    sc = loads(CONTRACT_EXAMPLE.replace('"llama2-7b"', '"Qwen3-0.6B"'))
    host = sc.build_host()
    snap = host.observe(2.0)
    assert [i.profile for i in snap.topology.gpu(1).instances] == [
        "1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    assert snap.tenants["t2"].placement is not None
    assert snap.tenants["t2"].placement.gi_id is not None  # first instance of GPU 1


def test_event_fields_of_the_wrong_type_are_errors_not_crashes() -> None:
    errs = errors_of(MINIMAL + "[[event]]\nat_s = 1\ntenant = []\naction = {}\n")
    assert any(e.startswith("event[0].tenant: expected a tenant name") for e in errs), errs
    assert any(e.startswith("event[0].action: expected one of") for e in errs), errs
