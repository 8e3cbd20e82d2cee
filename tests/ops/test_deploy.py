"""deploy/: Kubernetes manifests (offline schema validation), alert rules (promtool), dashboard."""

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from gpuguardd import config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gpuguardd.json"
K8S_VERSION = "1.30.0"


def manifests() -> dict[str, dict]:
    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name'] if 'metadata' in doc else f.name}"] = doc
    return out


@pytest.fixture(scope="module")
def kv():
    return pytest.importorskip("kubernetes_validate",
                               reason="kubernetes-validate not installed (dev extra)")


def test_core_manifests_validate_against_the_kubernetes_schema(kv):
    checked = []
    for key, doc in manifests().items():
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "kustomize.config.k8s.io/")):
            continue  # CRDs: no upstream schema; checked structurally below
        kv.validate(doc, K8S_VERSION, strict=True)
        checked.append(key)
    assert sorted(checked) == sorted([
        "ClusterRole/gpuguardd", "ClusterRoleBinding/gpuguardd", "ConfigMap/gpuguardd-config",
        "DaemonSet/gpuguardd", "Namespace/gpuguard-system", "Service/gpuguardd",
        "ServiceAccount/gpuguardd"])


def test_the_validator_rejects_a_typo(kv):
    ds = copy.deepcopy(manifests()["DaemonSet/gpuguardd"])
    ds["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSION, strict=True)
    ds = copy.deepcopy(manifests()["DaemonSet/gpuguardd"])
    ds["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSION, strict=True)


def test_daemonset_has_what_the_daemon_needs():
    m = manifests()
    ds = m["DaemonSet/gpuguardd"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["hostPID"] is True
    assert pod["serviceAccountName"] == m["ServiceAccount/gpuguardd"]["metadata"]["name"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {vm["name"]: vm for vm in c["volumeMounts"]}
    assert set(mounts) == set(volumes)
    host_paths = {v["hostPath"]["path"]: mounts[n]["mountPath"]
                  for n, v in volumes.items() if "hostPath" in v}
    for path in ("/sys/fs/cgroup", "/dev", "/usr/local/vgpu", "/tmp/nvidia-mps",
                 "/var/lib/kubelet/pod-resources", "/var/lib/gpuguardd", "/run/gpuguardd"):
        assert host_paths.get(path) == path, path
    assert mounts["pod-resources"]["readOnly"] is True
    # the configuration the pod runs is valid and consistent with the pod spec
    cm = m["ConfigMap/gpuguardd-config"]
    cfg = config.loads(cm["data"]["gpuguardd.toml"])
    assert "/etc/gpuguardd/gpuguardd.toml" in c["args"]
    assert mounts["config"]["mountPath"] == "/etc/gpuguardd"
    (port,) = c["ports"]
    assert cfg.metrics.listen == f"0.0.0.0:{port['containerPort']}"
    assert cfg.control.socket.startswith("/run/gpuguardd/")
    assert cfg.push.socket.startswith("/run/gpuguardd/")
    assert cfg.daemon.state_dir == "/var/lib/gpuguardd"
    # tenant discovery: on, reading the mounted kubelet socket and the downward API's node name
    assert cfg.kubernetes.enabled
    assert cfg.kubernetes.pod_resources_socket.startswith(mounts["pod-resources"]["mountPath"])
    env = {e["name"]: e for e in c["env"]}
    assert env[cfg.kubernetes.node_name_env]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "spec.nodeName")
    assert cfg.kubernetes.api_server == ""  # in-cluster: the service account below
    assert m["DaemonSet/gpuguardd"]["spec"]["template"]["spec"].get(
        "automountServiceAccountToken", True) is not False
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # RBAC: read pods, nothing else
    (rule,) = m["ClusterRole/gpuguardd"]["rules"]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}


def test_service_and_monitors_select_the_daemonset():
    m = manifests()
    pod_labels = m["DaemonSet/gpuguardd"]["spec"]["template"]["metadata"]["labels"]
    svc = m["Service/gpuguardd"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    container_ports = {p["name"] for p in
                       m["DaemonSet/gpuguardd"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    sm, pm = m["ServiceMonitor/gpuguardd"], m["PodMonitor/gpuguardd"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= svc_ports
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= container_ports
    # the job label becomes job="gpuguardd", which the alert rules select
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "gpuguardd"
    kust = m["Kustomization/kustomization.yaml"]
    assert all((K8S / r).is_file() for r in kust["resources"])


def _promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/test installs it)")
    return tool


def test_rules_check_and_unit_tests():
    tool = _promtool()
    r = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([tool, "test", "rules", "rules.test.yml"], cwd=RULES.parent,
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_runbook_section():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^## (.+)$", runbook, re.M)}
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
              if "alert" in r]
    assert len(alerts) >= 8
    for a in alerts:
        link = a["annotations"]["runbook"]
        assert link == f"docs/runbook.md#{a['alert'].lower()}"
        assert a["alert"].lower() in anchors, a["alert"]
        assert a["labels"]["severity"] in ("critical", "warning", "info")


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"]
              if a.get("datasource", {}).get("type") == "prometheus"]
    return exprs


def test_dashboard_promql_parses(tmp_path):
    tool = _promtool()
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")
                  .replace("$tenant", ".*")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_shows_the_contract_metrics():
    text = "\n".join(dashboard_exprs())
    for needle in ('gpuguard_tenant_latency_seconds{instance=~"$instance", tenant=~"$tenant", '
                   'kind="ttft", quantile="0.99"}', "gpuguard_tenant_slo_seconds",
                   "gpuguard_tenant_level", "gpuguard_actions_total",
                   "gpuguard_gpu_pcie_bytes_total", "gpuguard_tick_duration_seconds_bucket"):
        assert needle in text, needle
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    assert set(re.findall(r"gpuguard:[a-z0-9_:]+", text)) <= recorded


def test_dashboard_and_rules_use_only_metrics_the_daemon_exports(sim_daemon):
    from tests.ops.conftest import http_get

    exposition = http_get(sim_daemon.url + "/metrics").decode()
    exported = set(re.findall(r"^# TYPE (gpuguard_\w+) (\w+)", exposition, re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_count", name + "_sum"}
    rules_text = RULES.read_text()
    used = set(re.findall(r"\bgpuguard_\w+", "\n".join(dashboard_exprs()) + rules_text))
    assert used and used <= names, sorted(used - names)


def test_configmap_toml_is_plain_toml():
    cm = manifests()["ConfigMap/gpuguardd-config"]
    assert tomllib.loads(cm["data"]["gpuguardd.toml"])["daemon"]["backend"] == "real"
