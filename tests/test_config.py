import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguardd import config

ROOT = Path(__file__).resolve().parents[1]


def errors_of(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    return e.value.errors


def test_defaults_are_valid_and_frozen():
    cfg = config.loads("")
    assert cfg.daemon.interval_s == 2.0
    assert cfg.metrics.listen.startswith("127.0.0.1:")
    with pytest.raises(AttributeError):
        cfg.daemon.interval_s = 1.0  # type: ignore[misc]


def test_production_example_is_valid():
    cfg = config.load(ROOT / "etc" / "gpuguardd.toml")
    assert [t.name for t in cfg.tenants] == ["chat", "etl"]
    assert cfg.tenants[1].hooks.restart == ["systemctl", "restart", "etl-loader.service"]
    assert cfg.tenants[0].may_restart is False and cfg.tenants[1].may_restart is True


def test_all_errors_named_by_key_path():
    errs = errors_of("""
[daemon]
intervall_s = 2.0
interval_s = -1
[[tenant]]
name = "t1"
class = "latency"
[tenant.slo]
ttft_p99_ms = "fast"
""")
    joined = "\n".join(errs)
    assert "daemon.intervall_s: unknown key (did you mean 'interval_s'?)" in joined
    assert "daemon.interval_s: must be >= 0.5" in joined
    assert "tenant[0].slo.ttft_p99_ms: expected number, got string 'fast'" in joined
    assert len(errs) == 3


@pytest.mark.parametrize(("text", "expected"), [
    ('[[tenant]]\nclass = "batch"', "tenant[0].name: required key is missing"),
    ('[[tenant]]\nname = "Bad Name"', "tenant[0].name: 'Bad Name' must match"),
    ('[[tenant]]\nname = "a"\n[[tenant]]\nname = "a"', "tenant[1].name: duplicate"),
    ('[[tenant]]\nname = "a"\nclass = "latency"', "tenant[0].slo: a latency tenant needs"),
    ('[[tenant]]\nname = "a"\ncgroup = "../etc"', "tenant[0].cgroup: '../etc' must be a relative"),
    ('[[tenant]]\nname = "a"\ncgroup = "/abs"', "tenant[0].cgroup: '/abs' must be a relative"),
    ('[[tenant]]\nname = "a"\nclass = "vip"', "tenant[0].class: must be one of"),
    ('[[tenant]]\nname = "a"\nhooks = { restart = [] }', "tenant[0].hooks.restart: must be"),
    ('[[tenant]]\nname = "a"\nlatency = { source = "prometheus" }', "tenant[0].latency.url"),
    ('[[tenant]]\nname = "a"\ndevices = ["sda"]', "tenant[0].devices[0]: 'sda' is not MAJ:MIN"),
    ('[daemon]\ndry_run = 1', "daemon.dry_run: expected boolean, got integer 1"),
    ('[metrics]\nlisten = "nowhere"', "metrics.listen: 'nowhere' is not host:port"),
    ('[policy]\nname = "yolo"', "policy.name: must be one of"),
    ('[kubernetes]\nrefresh_s = 1', "kubernetes.refresh_s: must be >= 5.0, got 1.0"),
    ('[kubernetes]\nenabled = true\npod_resources_socket = "k.sock"',
     "kubernetes.pod_resources_socket: 'k.sock' must be an absolute path"),
    ('[kubernetes]\napi_server = "10.0.0.1:6443"', "kubernetes.api_server: '10.0.0.1:6443' is"),
    ('[kubernetes]\nnode_name_env = "NODE-NAME"', "kubernetes.node_name_env: 'NODE-NAME' is"),
    ('[kubernetes]\nlatency_namespaces = "llm"', "kubernetes.latency_namespaces: expected an"),
    ('[daemon', "TOML syntax"),
    ('daemon = 3', "daemon: expected a table, got integer 3"),
])
def test_bad_input_is_named(text, expected):
    assert any(expected in e for e in errors_of(text)), errors_of(text)


def test_check_config_cli_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nintervall_s = 2\ninterval_s = -3\n[[tenant]]\nname = "t1"\n'
                   'class = "latency"\nslo = { ttft_p99_ms = "x" }\n')
    r = subprocess.run([sys.executable, "-m", "gpuguardd", "check-config", str(bad)],
                       capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 2
    assert "daemon.intervall_s" in r.stderr and "daemon.interval_s" in r.stderr
    assert "tenant[0].slo.ttft_p99_ms" in r.stderr
    assert "Traceback" not in r.stderr
    missing = subprocess.run([sys.executable, "-m", "gpuguardd", "check-config",
                              str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, cwd=ROOT, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_reference_covers_every_section():
    ref = config.reference()
    for key in ("[daemon]", "[[tenant]]", "[tenant.slo]", "interval_s", "ttft_p99_ms"):
        assert key in ref


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["daemon", "metrics", "push", "policy", "tenant", "x"]),
                       toml_values, max_size=4))
def test_loader_never_raises_anything_but_config_error(data):
    try:
        config.from_dict(data)
    except config.ConfigError as e:
        assert e.errors and all(isinstance(m, str) and ":" in m for m in e.errors)


def test_daemon_refuses_a_writable_config(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text("")
    f.chmod(0o644)
    config.load(f, trusted_only=True)
    f.chmod(0o666)
    with pytest.raises(config.ConfigError, match="world-writable"):
        config.load(f, trusted_only=True)
    f.chmod(0o644)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(config.ConfigError, match="directory is world-writable"):
            config.load(f, trusted_only=True)
    finally:
        tmp_path.chmod(0o700)
    config.load(f)  # check-config only reads
