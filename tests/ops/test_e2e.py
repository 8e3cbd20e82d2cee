"""End to end on the simulated host: a real Prometheus scrapes the daemon; ctl talks to it."""

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from gpuguardd.cli import main
from tests.ops.conftest import free_port, http_get, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _mebibytes(q: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", q)
    assert m, q
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_real_prometheus_scrapes_the_daemon(sim_daemon, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian package prometheus; scripts/test "
                    "installs it)")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "rules.yml")],
        "scrape_configs": [{"job_name": "gpuguardd", "scrape_interval": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{sim_daemon.port}"]}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr):
        body = http_get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
        if body is None:
            return None
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    try:
        result = wait_for(
            lambda: proc.poll() is None and query(
                'gpuguard_tenant_latency_seconds{job="gpuguardd", quantile="0.99"}'),
            60, "Prometheus to scrape gpuguard_tenant_latency_seconds", interval_s=0.5)
        assert proc.poll() is None
        by = {(r["metric"]["tenant"], r["metric"]["kind"]): float(r["value"][1]) for r in result}
        assert ("t1", "ttft") in by and 0 < by[("t1", "ttft")] < 10
        assert query('up{job="gpuguardd"}')[0]["value"][1] == "1"
        targets = json.loads(http_get(f"{api}/targets"))["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
        # the recording rules evaluate against the live series
        ratio = wait_for(lambda: query("gpuguard:tenant_slo_violation_ratio:rate5m"), 30,
                         "the violation-ratio recording rule", interval_s=0.5)
        assert {r["metric"]["tenant"] for r in ratio} >= {"t1"}
        groups = json.loads(http_get(f"{api}/rules"))["data"]["groups"]
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_ctl_against_the_running_daemon(sim_daemon, capsys):
    code = main(["ctl", "--socket", sim_daemon.control, "--json", "status"])
    out, err = capsys.readouterr()
    assert code == 0, err
    st = json.loads(out)
    assert st["daemon"]["pid"] == sim_daemon.proc.pid
    assert set(st["tenants"]) >= {"t1"} and st["slo"]["t1"]["ttft_p99_ms"] > 0
    assert main(["ctl", "--socket", sim_daemon.control, "explain", "t1"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("tenant t1: level ")
    # the same read-only view over HTTP /status
    assert main(["ctl", "--url", sim_daemon.url, "--json", "status"]) == 0
    out, _ = capsys.readouterr()
    assert set(json.loads(out)["tenants"]) == set(st["tenants"])
    mode = Path(sim_daemon.control).stat().st_mode & 0o777
    assert mode == 0o600


def test_memory_requests_cover_the_measured_rss(sim_daemon):
    time.sleep(2)  # let it run a few hundred ticks at speed 20
    peak_mib = sim_daemon.rss_peak_bytes() / 2**20
    ds = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    res = ds["spec"]["template"]["spec"]["containers"][0]["resources"]
    request, limit = _mebibytes(res["requests"]["memory"]), _mebibytes(res["limits"]["memory"])
    unit_max = re.search(r"^MemoryMax=(\d+)M$",
                         (ROOT / "systemd" / "gpuguardd.service").read_text(), re.M)
    assert unit_max and int(unit_max.group(1)) == limit
    print(f"peak RSS {peak_mib:.1f} MiB, request {request} MiB, limit {limit} MiB")
    assert peak_mib * 1.2 <= request <= limit, (peak_mib, request, limit)
    assert limit >= 2 * peak_mib


def test_sigterm_exits_zero_after_restoring(tmp_path):
    """A second, short-lived daemon: SIGTERM -> exit 0, control socket removed."""
    import importlib.util
    import sys

    if importlib.util.find_spec("gpuguardd.sim.scenario") is None:
        pytest.skip("gpuguardd.sim is not on this branch yet")
    tmp_path.chmod(0o755)
    cfg = tmp_path / "g.toml"
    sock = tmp_path / "ctl.sock"
    cfg.write_text(f'[control]\nsocket = "{sock}"\n')
    cfg.chmod(0o644)
    port = free_port()
    exe = shutil.which("gpuguardd", path=str(Path(sys.executable).parent)) or "gpuguardd"
    proc = subprocess.Popen([exe, "run", "--sim", "--speed", "20", "--listen",
                             f"127.0.0.1:{port}", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: sock.exists() and http_get(f"http://127.0.0.1:{port}/healthz"), 30,
                 "the daemon to serve")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert not sock.exists()
    assert b'"event": "stopped"' in err
