"""Kubernetes tenant discovery: a fake kubelet speaking PodResources v1 over a unix socket."""

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from gpuguardd.host import kubelet
from gpuguardd.host.kubelet import (
    ApiServerPods,
    ContainerAllocation,
    Devices,
    DiscoveryError,
    PodInfo,
    discover,
    pods_from_json,
)

grpc = pytest.importorskip("grpc", reason="grpcio not installed (pip install .[kubernetes])")
pytest.importorskip("grpc_tools", reason="grpcio-tools not installed (dev extra)")

PROTO = Path(__file__).parent / "data" / "podresources_v1.proto"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Classes protoc generates from the .proto: an implementation independent of ours."""
    out = tmp_path_factory.mktemp("gen")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    f"--descriptor_set_out={out / 'set.pb'}", PROTO.name], check=True)
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("podresources_v1_pb2")
        pb2_grpc = importlib.import_module("podresources_v1_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc, (out / "set.pb").read_bytes()


def test_declared_messages_match_the_proto_file(generated):
    from google.protobuf import descriptor_pb2

    *_, set_bytes = generated
    fds = descriptor_pb2.FileDescriptorSet.FromString(set_bytes)
    (theirs,) = fds.file
    ours = kubelet.file_descriptor()

    def shape(f):
        msgs = {m.name: sorted((x.name, x.number, x.type, x.label, x.type_name) for x in m.field)
                for m in f.message_type}
        svcs = {(s.name, m.name, m.input_type, m.output_type) for s in f.service for m in s.method}
        return f.package, msgs, svcs

    assert shape(ours) == shape(theirs)


def alloc_response(pb2):
    topo = pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=1)])
    return pb2.ListPodResourcesResponse(pod_resources=[
        pb2.PodResources(name="chat-0", namespace="llm", containers=[
            pb2.ContainerResources(name="vllm", cpu_ids=[2, 3], devices=[
                pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-aaa"],
                                     topology=topo)]),
        ]),
        pb2.PodResources(name="etl-1", namespace="batch", containers=[
            pb2.ContainerResources(name="etl", devices=[
                pb2.ContainerDevices(resource_name="nvidia.com/mig-1g.10gb",
                                     device_ids=["MIG-bbb"]),
                pb2.ContainerDevices(resource_name="example.com/nic", device_ids=["eth9"])]),
            pb2.ContainerResources(name="sidecar"),
        ]),
        pb2.PodResources(name="train", namespace="dra", containers=[
            pb2.ContainerResources(name="t", dynamic_resources=[pb2.DynamicResource(
                claim_name="gpu", claim_namespace="dra", claim_resources=[pb2.ClaimResource(
                    driver_name="gpu.nvidia.com", pool_name="node1", device_name="gpu-1",
                    cdi_devices=[pb2.CDIDevice(name="k8s.gpu.nvidia.com/device=gpu-1")])])]),
        ]),
    ])


@pytest.fixture
def fake_kubelet(generated, tmp_path):
    pb2, pb2_grpc, _ = generated
    calls = []

    class Lister(pb2_grpc.PodResourcesListerServicer):
        mode = "ok"

        def List(self, request, context):
            calls.append(request)
            if Lister.mode == "denied":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "pod-resources is root-only")
            return alloc_response(pb2)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb2_grpc.add_PodResourcesListerServicer_to_server(Lister(), server)
    sock = tmp_path / "kubelet.sock"
    assert server.add_insecure_port(f"unix://{sock}") == 1
    server.start()
    yield str(sock), Lister, calls
    server.stop(grace=None)


def test_list_over_the_real_protocol(fake_kubelet):
    path, _, calls = fake_kubelet
    client = kubelet.PodResourcesClient(path, timeout_s=5)
    try:
        allocs = client.list()
        assert len(client.list()) == 4  # the channel is reused
    finally:
        client.close()
    assert len(calls) == 2
    by = {(a.namespace, a.pod, a.container): a for a in allocs}
    chat = by[("llm", "chat-0", "vllm")]
    assert chat.devices == (Devices("nvidia.com/gpu", ("GPU-aaa",), (1,)),)
    assert chat.cpu_ids == (2, 3) and chat.gpus == ("GPU-aaa",)
    assert by[("batch", "etl-1", "etl")].gpus == ("MIG-bbb",)  # the NIC is not a GPU
    assert by[("batch", "etl-1", "sidecar")].gpus == ()
    assert by[("dra", "train", "t")].devices == (Devices("dra:gpu.nvidia.com", ("gpu-1",)),)
    assert by[("dra", "train", "t")].gpus == ("gpu-1",)


def test_kubelet_errors_are_discovery_errors(fake_kubelet, tmp_path):
    path, lister, _ = fake_kubelet
    lister.mode = "denied"
    client = kubelet.PodResourcesClient(path, timeout_s=5)
    with pytest.raises(DiscoveryError, match="PERMISSION_DENIED: pod-resources is root-only"):
        client.list()
    client.close()
    missing = kubelet.PodResourcesClient(str(tmp_path / "nope.sock"), timeout_s=0.5)
    with pytest.raises(DiscoveryError, match=r"nope.sock: (UNAVAILABLE|DEADLINE_EXCEEDED)"):
        missing.list()
    missing.close()


def test_without_grpcio_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(DiscoveryError, match=r"gpuguardd\[kubernetes\]"):
        kubelet.PodResourcesClient("/nonexistent")


POD_LIST = {"kind": "PodList", "items": [
    {"metadata": {"namespace": "llm", "name": "chat-0",
                  "uid": "11111111-2222-3333-4444-555555555555",
                  "annotations": {"gpuguard.io/enabled": "true", "gpuguard.io/tenant": "chat",
                                  "gpuguard.io/class": "latency",
                                  "gpuguard.io/ttft-p99-ms": "250",
                                  "gpuguard.io/metrics-port": "8000"}},
     "status": {"phase": "Running", "qosClass": "Burstable", "podIP": "10.1.2.3",
                "containerStatuses": [{"name": "vllm", "containerID": "containerd://abc"}]}},
    {"metadata": {"namespace": "batch", "name": "etl-1", "uid": "aaaa-bbbb",
                  "annotations": {"gpuguard.io/enabled": "yes", "gpuguard.io/container": "etl",
                                  "gpuguard.io/restartable": "true"}},
     "status": {"phase": "Running", "qosClass": "Guaranteed"}},
    {"metadata": {"namespace": "llm", "name": "broken", "uid": "c",
                  "annotations": {"gpuguard.io/enabled": "true", "gpuguard.io/class": "latency"}},
     "status": {"phase": "Running", "qosClass": "BestEffort"}},
    {"metadata": {"namespace": "llm", "name": "chat-dup", "uid": "d",
                  "annotations": {"gpuguard.io/enabled": "true", "gpuguard.io/tenant": "chat",
                                  "gpuguard.io/class": "batch"}},
     "status": {"phase": "Running", "qosClass": "BestEffort"}},
    {"metadata": {"namespace": "llm", "name": "off", "uid": "e",
                  "annotations": {"gpuguard.io/class": "batch"}},
     "status": {"phase": "Running"}},
    {"metadata": {"namespace": "kube-system", "name": "dns", "uid": "f"},
     "status": {"phase": "Running"}},
    {"metadata": {"namespace": "llm", "name": "done", "uid": "g",
                  "annotations": {"gpuguard.io/enabled": "true"}},
     "status": {"phase": "Succeeded"}},
]}

ALLOCS = [
    ContainerAllocation("llm", "chat-0", "vllm", (Devices("nvidia.com/gpu", ("GPU-aaa",)),)),
    ContainerAllocation("batch", "etl-1", "etl",
                        (Devices("nvidia.com/mig-1g.10gb", ("MIG-bbb", "MIG-ccc")),)),
    ContainerAllocation("batch", "etl-1", "other", (Devices("nvidia.com/gpu", ("GPU-zzz",)),)),
]


def test_pod_owners_cannot_promote_themselves(tmp_path):
    """Annotations are tenant-controlled: latency only in the operator's namespaces, no
    claiming a configured tenant's name, discovery limited to the listed namespaces."""
    pods = pods_from_json(POD_LIST)
    d = discover(ALLOCS, pods, cgroup_root=tmp_path)  # no latency namespaces: the default
    assert [t for t in d.tenants if t.tenant_class == "latency"] == []
    assert dict(d.skipped)["llm/chat-0"] == (
        "class latency is not allowed in namespace 'llm' (operator's latency namespaces)")
    # with chat-0 refused, chat-dup (batch) may take the name
    assert {t.name: t.tenant_class for t in d.tenants}["chat"] == "batch"
    d = discover(ALLOCS, pods, cgroup_root=tmp_path, latency_namespaces={"llm"},
                 reserved_names={"chat"})
    assert "chat" not in {t.name for t in d.tenants}
    assert dict(d.skipped)["llm/chat-0"] == "tenant name 'chat' already taken"
    d = discover(ALLOCS, pods, cgroup_root=tmp_path, latency_namespaces={"llm"},
                 namespaces={"batch"})
    assert [t.name for t in d.tenants] == ["batch-etl-1"]
    assert dict(d.skipped)["llm/chat-0"] == "namespace 'llm' is not discovered"


def test_discover_maps_opted_in_pods_to_tenants(tmp_path):
    root = tmp_path / "cgroup"
    # systemd driver (burstable pod) and cgroupfs driver (guaranteed pod)
    (root / "kubepods.slice/kubepods-burstable.slice/"
            "kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice").mkdir(parents=True)
    (root / "kubepods/podaaaa-bbbb").mkdir(parents=True)
    pods = pods_from_json(POD_LIST)
    assert "done" not in [p.name for p in pods]
    d = discover(ALLOCS, pods, cgroup_root=root, latency_namespaces={"llm"})
    by = {t.name: t for t in d.tenants}
    assert sorted(by) == ["batch-etl-1", "chat"]
    chat = by["chat"]
    assert (chat.tenant_class, chat.slo.ttft_p99_ms, chat.gpu) == ("latency", 250.0, "GPU-aaa")
    assert chat.cgroup == ("kubepods.slice/kubepods-burstable.slice/"
                           "kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice")
    assert (chat.latency.source, chat.latency.url) == ("prometheus",
                                                        "http://10.1.2.3:8000/metrics")
    etl = by["batch-etl-1"]
    assert (etl.tenant_class, etl.may_restart) == ("batch", True)
    assert etl.cgroup == "kubepods/podaaaa-bbbb"
    assert etl.gpu == "MIG-bbb" and d.gpus["batch-etl-1"] == ("MIG-bbb", "MIG-ccc")
    assert dict(d.skipped) == {
        "llm/broken": "a latency tenant needs gpuguard.io/ttft-p99-ms or tpot-p99-ms",
        "llm/chat-dup": "tenant name 'chat' already taken",
        "llm/off": "not opted in (gpuguard.io/enabled)",
    }


@pytest.mark.parametrize(("annotations", "error"), [
    ({"gpuguard.io/class": "premium"}, "gpuguard.io/class 'premium' is not latency or batch"),
    ({"gpuguard.io/ttft-p99-ms": "fast"}, "gpuguard.io/ttft-p99-ms 'fast' is not a number"),
    ({"gpuguard.io/ttft-p99-ms": "-1"}, "gpuguard.io/ttft-p99-ms must be > 0"),
    ({"gpuguard.io/restartable": "maybe"}, "gpuguard.io/restartable 'maybe' is not a boolean"),
    ({"gpuguard.io/tenant": "Bad Name"}, "tenant name 'Bad Name' does not match"),
    ({"gpuguard.io/metrics-port": "99999"}, "gpuguard.io/metrics-port '99999' is not a port"),
    ({"gpuguard.io/metrics-port": "80", "gpuguard.io/metrics-flavor": "tgi"},
     "gpuguard.io/metrics-flavor 'tgi' is not vllm or sglang"),
])
def test_bad_annotations_are_skipped_with_the_reason(tmp_path, annotations, error):
    pod = PodInfo("ns", "p", "u", "BestEffort", "10.0.0.1",
                  {"gpuguard.io/enabled": "true", **annotations})
    d = discover([], [pod], cgroup_root=tmp_path)
    assert d.tenants == ()
    ((ref, why),) = d.skipped
    assert ref == "ns/p" and why.startswith(error)


@pytest.fixture
def fake_api_server():
    """An API server on loopback answering ``GET /api/v1/pods`` with ``state["doc"]`` (a
    PodList the test may change); ``state["seen"]`` holds the request paths."""
    state = {"doc": POD_LIST, "seen": []}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            state["seen"].append(self.path)
            body = json.dumps(state["doc"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    state["url"] = f"http://127.0.0.1:{srv.server_port}"
    yield state
    srv.shutdown()
    srv.server_close()


def test_api_server_pods_of_this_node(fake_api_server):
    url = fake_api_server["url"]
    pods = ApiServerPods("gpu-node-7", base_url=url).list()
    assert fake_api_server["seen"] == ["/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-7"]
    assert [p.name for p in pods][:2] == ["chat-0", "etl-1"]
    assert pods[0].container_ids == {"vllm": "containerd://abc"}
    fake_api_server["doc"] = "not a pod list"
    assert ApiServerPods("n", base_url=url).list() == []
    with pytest.raises(DiscoveryError, match="API server pods of node n"):
        ApiServerPods("n", base_url="http://127.0.0.1:1", timeout_s=0.5).list()


def test_in_cluster_needs_the_service_account(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DiscoveryError, match="not in a cluster"):
        ApiServerPods("n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(DiscoveryError, match="service account token"):
        ApiServerPods("n", sa_dir=tmp_path)


# -- the daemon discovers its tenants (``[kubernetes] enabled = true``) -------------------------
NODE_PODS = {"kind": "PodList", "items": [
    {"metadata": {"namespace": "llm", "name": "chat-0", "uid": "1111-2222",
                  "annotations": {"gpuguard.io/enabled": "true", "gpuguard.io/tenant": "chat",
                                  "gpuguard.io/class": "latency",
                                  "gpuguard.io/ttft-p99-ms": "250"}},
     "status": {"phase": "Running", "qosClass": "Burstable"}},
    {"metadata": {"namespace": "batch", "name": "etl-1", "uid": "aaaa-bbbb",
                  "annotations": {"gpuguard.io/enabled": "true"}},
     "status": {"phase": "Running", "qosClass": "Guaranteed"}},
]}
ETL_IO_MAX = "8:16 rbps=max wbps=max riops=max wiops=max\n"


def daemon_config(tmp_path, socket, api_url, *, tenants=""):
    """A real-backend daemon on fake trees: no GPU needed, loopback metrics on a free port, a
    cgroup v2 tree holding the etl-1 pod's cgroup (cgroupfs driver, Guaranteed)."""
    cg = tmp_path / "cgroup"
    pod = cg / "kubepods" / "podaaaa-bbbb"
    pod.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpu io memory pids\n")
    (pod / "io.max").write_text(ETL_IO_MAX)
    (pod / "io.stat").write_text("8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n")
    (tmp_path / "root").mkdir()
    path = tmp_path / "gpuguardd.toml"
    path.write_text(f"""
[daemon]
backend = "real"
require_gpu = false
state_dir = "{tmp_path / 'state'}"
cgroup_root = "{cg}"
fs_root = "{tmp_path / 'root'}"
[metrics]
listen = "127.0.0.1:0"
[push]
socket = "{tmp_path / 'run' / 'latency.sock'}"
[control]
socket = "{tmp_path / 'run' / 'control.sock'}"
[kubernetes]
enabled = true
pod_resources_socket = "{socket}"
api_server = "{api_url}"
latency_namespaces = ["llm"]
timeout_s = 1.0
{tenants}""")
    path.chmod(0o644)
    return path, pod / "io.max"


@pytest.fixture
def k8s_daemon(fake_kubelet, fake_api_server, tmp_path, monkeypatch):
    from gpuguardd import config
    from gpuguardd.app.daemon import build

    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    fake_api_server["doc"] = json.loads(json.dumps(NODE_PODS))
    path, io_max = daemon_config(tmp_path, fake_kubelet[0], fake_api_server["url"],
                                 tenants='[[tenant]]\nname = "static"\n')
    d = build(config.load(path), config_path=str(path))
    yield d, fake_api_server, io_max
    d.control.close()
    d.server.close()
    d.host.close()


def test_the_daemon_adds_discovered_tenants_at_start(k8s_daemon):
    d, api, _ = k8s_daemon
    assert api["seen"] == ["/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-7"]
    by = {t.name: t for t in d.engine.config.tenants}
    assert list(by) == ["static", "batch-etl-1", "chat"]  # configured first
    assert (by["chat"].tenant_class, by["chat"].gpu) == ("latency", "GPU-aaa")
    assert (by["batch-etl-1"].cgroup, by["batch-etl-1"].gpu) == ("kubepods/podaaaa-bbbb",
                                                                 "MIG-bbb")
    assert d.host.config is d.engine.config
    d.server.start()
    host, port = d.server.address
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as resp:
        status = json.loads(resp.read())
    assert status["slo"] == {"static": {"ttft_p99_ms": None, "tpot_p99_ms": None},
                             "batch-etl-1": {"ttft_p99_ms": None, "tpot_p99_ms": None},
                             "chat": {"ttft_p99_ms": 250.0, "tpot_p99_ms": None}}


def test_a_configured_name_wins_over_a_pod(fake_kubelet, fake_api_server, tmp_path,
                                           monkeypatch):
    from gpuguardd import config
    from gpuguardd.app.daemon import build

    monkeypatch.setenv("NODE_NAME", "n")
    fake_api_server["doc"] = NODE_PODS
    path, _ = daemon_config(tmp_path, fake_kubelet[0], fake_api_server["url"],
                            tenants='[[tenant]]\nname = "chat"\nclass = "batch"\n')
    d = build(config.load(path), config_path=str(path))
    try:
        by = {t.name: t for t in d.engine.config.tenants}
        assert sorted(by) == ["batch-etl-1", "chat"]
        assert (by["chat"].tenant_class, by["chat"].gpu) == ("batch", None)
    finally:
        d.control.close()
        d.server.close()
        d.host.close()


def _throttle_etl(d, io_max):
    from gpuguardd.model.actions import IoLimit, IoThrottle, Result

    (outcome,) = d.engine.executor.apply(
        [IoThrottle("batch-etl-1", "8:16", IoLimit(wbps=10_000_000), "test",
                    expires_at=1e12)], 100.0)
    assert outcome.result is Result.APPLIED, outcome
    assert io_max.read_text() == "8:16 rbps=max wbps=10000000 riops=max wiops=max\n"
    assert [e.key for e in d.engine.executor.active()] == ["io:batch-etl-1:8:16"]


def test_a_pod_gone_at_reload_loses_its_tenant_and_its_throttle(k8s_daemon, logs):
    d, api, io_max = k8s_daemon
    _throttle_etl(d, io_max)
    api["doc"] = {"items": NODE_PODS["items"][:1]}  # etl-1 finished
    d.reload()  # SIGHUP
    assert [t.name for t in d.engine.config.tenants] == ["static", "chat"]
    assert d.host.config is d.engine.config
    assert io_max.read_text() == ETL_IO_MAX  # the throttle is lifted
    assert d.engine.executor.active() == []
    assert d.reloads["ok"] == 1
    d.engine.tick(200.0)  # the policy copes with the smaller tenant list
    assert d.engine.tick_errors == 0
    assert any(e["event"] == "restored" and e["key"] == "io:batch-etl-1:8:16" for e in logs)


def test_turning_discovery_off_at_reload_drops_the_discovered_tenants(k8s_daemon):
    d, api, io_max = k8s_daemon
    _throttle_etl(d, io_max)
    path = Path(d.config_path)
    path.write_text(path.read_text().replace("enabled = true", "enabled = false"))
    calls = len(api["seen"])
    d.reload()
    assert [t.name for t in d.engine.config.tenants] == ["static"]
    assert len(api["seen"]) == calls
    assert io_max.read_text() == ETL_IO_MAX
    d.next_discovery = 0.0
    d.refresh()  # off: the periodic discovery does not run either
    assert len(api["seen"]) == calls


def test_periodic_rediscovery_in_the_engine_loop(k8s_daemon):
    d, api, io_max = k8s_daemon
    _throttle_etl(d, io_max)
    stop, reload = threading.Event(), threading.Event()
    assert d.next_discovery > time.monotonic() + 50  # refresh_s = 60: not due yet
    runner = threading.Thread(target=d.run, args=(stop, reload), daemon=True)
    runner.start()
    try:
        calls = len(api["seen"])
        time.sleep(0.3)
        assert len(api["seen"]) == calls  # not asked again before refresh_s
        api["doc"] = {"items": NODE_PODS["items"][:1]}
        d.next_discovery = 0.0  # refresh_s has passed
        deadline = time.monotonic() + 10
        while "batch-etl-1" in {t.name for t in d.engine.config.tenants}:
            assert time.monotonic() < deadline, "the pod's tenant was never dropped"
            time.sleep(0.05)
        assert io_max.read_text() == ETL_IO_MAX
        assert len(api["seen"]) == calls + 1
        assert d.next_discovery > time.monotonic() + 50
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()


def test_a_throttle_that_cannot_be_lifted_keeps_its_tenant(k8s_daemon, logs, monkeypatch):
    d, api, io_max = k8s_daemon
    _throttle_etl(d, io_max)

    def failing(*a):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(d.host, "set_io_limit", failing)
    api["doc"] = {"items": NODE_PODS["items"][:1]}
    d.reload()
    assert "batch-etl-1" in {t.name for t in d.engine.config.tenants}  # still known...
    (kept,) = [e for e in logs if e["event"] == "tenant_kept"]
    assert kept["tenants"] == ["batch-etl-1"]
    assert [e.key for e in d.engine.executor.active()] == ["io:batch-etl-1:8:16"]
    monkeypatch.undo()
    d.next_discovery = 0.0
    d.refresh()  # ...so that the next discovery (unchanged) lifts the throttle and lets it go
    assert "batch-etl-1" not in {t.name for t in d.engine.config.tenants}
    assert io_max.read_text() == ETL_IO_MAX
    assert d.engine.executor.active() == []


def test_a_pod_whose_cgroup_is_gone_leaves_without_error(k8s_daemon, logs):
    d, api, io_max = k8s_daemon
    _throttle_etl(d, io_max)
    shutil.rmtree(io_max.parent)  # the kubelet removed the pod's cgroup
    api["doc"] = {"items": NODE_PODS["items"][:1]}
    d.next_discovery = 0.0
    d.refresh()
    assert "batch-etl-1" not in {t.name for t in d.engine.config.tenants}
    assert d.engine.executor.active() == []
    assert not [e for e in logs if e["event"] in ("tenant_kept", "tenant_refresh_failed")]


def test_discovery_failure(tmp_path, fake_api_server, monkeypatch, logs):
    """No kubelet socket: without configured tenants the start fails with a clear message;
    with them the daemon starts with a warning, and a reload keeps running."""
    from gpuguardd import config
    from gpuguardd.app.daemon import StartupError, build

    monkeypatch.setenv("NODE_NAME", "n")
    missing = tmp_path / "missing" / "kubelet.sock"
    path, _ = daemon_config(tmp_path, missing, fake_api_server["url"])
    with pytest.raises(StartupError, match=r"kubernetes tenant discovery failed and no tenant "
                                           r"is configured: kubelet .*missing/kubelet.sock"):
        build(config.load(path), config_path=str(path))
    path.write_text(path.read_text() + '[[tenant]]\nname = "static"\n')
    d = build(config.load(path), config_path=str(path))
    try:
        assert [t.name for t in d.engine.config.tenants] == ["static"]
        (warn,) = [e for e in logs if e["event"] == "tenant_discovery_failed"]
        assert warn["log_level"] == "warning" and "missing/kubelet.sock" in warn["error"]
        d.reload()
        assert [t.name for t in d.engine.config.tenants] == ["static"]
        assert d.reloads["discovery_failed"] == 1 and d.reloads["ok"] == 1
    finally:
        d.control.close()
        d.server.close()
        d.host.close()


def test_node_name_must_be_set(tmp_path, fake_api_server, monkeypatch):
    from gpuguardd import config
    from gpuguardd.app.daemon import StartupError, build

    monkeypatch.delenv("NODE_NAME", raising=False)
    path, _ = daemon_config(tmp_path, tmp_path / "k.sock", fake_api_server["url"])
    with pytest.raises(StartupError, match=r"NODE_NAME .* is unset"):
        build(config.load(path), config_path=str(path))
