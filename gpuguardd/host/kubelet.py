"""Tenant discovery on Kubernetes: which container runs on which GPU / MIG device, in which cgroup.

Two sources, both read-only:

* the kubelet PodResources API v1 (gRPC ``v1.PodResourcesLister/List`` on the unix socket
  ``/var/lib/kubelet/pod-resources/kubelet.sock``): the devices each container was given by
  device plugins (``nvidia.com/gpu`` -> GPU UUIDs, ``nvidia.com/mig-1g.10gb`` -> MIG UUIDs) or
  by DRA (``gpu.nvidia.com`` claims), with their NUMA nodes;
* the pods of this node from the API server (``GET /api/v1/pods?fieldSelector=spec.nodeName=``,
  service-account token; RBAC: get/list pods): uid, QoS class, IP and the ``gpuguard.io/*``
  annotations by which a pod opts in and states its class and SLO.

Wire format without generated code: the PodResources messages are declared below with
protobuf's descriptor API (``descriptor_pb2``) from the public ``api.proto`` of
``k8s.io/kubelet/pkg/apis/podresources/v1`` (the subset we read: unknown fields are skipped by
protobuf, so newer kubelets stay compatible). ``tests/ops/data/podresources_v1.proto`` holds
the same subset as a .proto file; a test compiles it with grpcio-tools and checks that both
declare the same fields, and serves it from a fake kubelet over a unix socket.

grpcio and protobuf are the optional extra ``gpuguardd[kubernetes]``; they are imported only
when a ``PodResourcesClient`` is created.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from gpuguardd.config import (
    TENANT_NAME,
    HooksConfig,
    LatencySourceConfig,
    SloConfig,
    TenantConfig,
)

POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ANNOTATION = "gpuguard.io/"
GPU_RESOURCE_PREFIX = "nvidia.com/"
DRA_GPU_DRIVERS = ("gpu.nvidia.com",)
MAX_MESSAGE_BYTES = 16 << 20


class DiscoveryError(Exception):
    """The kubelet or the API server cannot be asked; the message says which and why."""


# -- the PodResources v1 messages, declared with the descriptor API ------------------------
_STRING, _INT64, _UINT64, _MESSAGE = 9, 3, 4, 11  # FieldDescriptorProto.Type
_OPTIONAL, _REPEATED = 1, 3  # FieldDescriptorProto.Label

# message -> [(field, number, type, label, message type)]; numbers from upstream api.proto
MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [("pod_resources", 1, _MESSAGE, _REPEATED, "PodResources")],
    "PodResources": [
        ("name", 1, _STRING, _OPTIONAL, ""),
        ("namespace", 2, _STRING, _OPTIONAL, ""),
        ("containers", 3, _MESSAGE, _REPEATED, "ContainerResources"),
    ],
    "ContainerResources": [
        ("name", 1, _STRING, _OPTIONAL, ""),
        ("devices", 2, _MESSAGE, _REPEATED, "ContainerDevices"),
        ("cpu_ids", 3, _INT64, _REPEATED, ""),
        ("memory", 4, _MESSAGE, _REPEATED, "ContainerMemory"),
        ("dynamic_resources", 5, _MESSAGE, _REPEATED, "DynamicResource"),
    ],
    "ContainerMemory": [
        ("memory_type", 1, _STRING, _OPTIONAL, ""),
        ("size", 2, _UINT64, _OPTIONAL, ""),
        ("topology", 3, _MESSAGE, _OPTIONAL, "TopologyInfo"),
    ],
    "ContainerDevices": [
        ("resource_name", 1, _STRING, _OPTIONAL, ""),
        ("device_ids", 2, _STRING, _REPEATED, ""),
        ("topology", 3, _MESSAGE, _OPTIONAL, "TopologyInfo"),
    ],
    "TopologyInfo": [("nodes", 1, _MESSAGE, _REPEATED, "NUMANode")],
    "NUMANode": [("ID", 1, _INT64, _OPTIONAL, "")],
    "DynamicResource": [
        ("claim_name", 2, _STRING, _OPTIONAL, ""),
        ("claim_namespace", 3, _STRING, _OPTIONAL, ""),
        ("claim_resources", 4, _MESSAGE, _REPEATED, "ClaimResource"),
    ],
    "ClaimResource": [
        ("cdi_devices", 1, _MESSAGE, _REPEATED, "CDIDevice"),
        ("driver_name", 2, _STRING, _OPTIONAL, ""),
        ("pool_name", 3, _STRING, _OPTIONAL, ""),
        ("device_name", 4, _STRING, _OPTIONAL, ""),
    ],
    "CDIDevice": [("name", 1, _STRING, _OPTIONAL, "")],
}
PACKAGE = "v1"


def file_descriptor() -> Any:
    """The ``FileDescriptorProto`` of the subset of ``podresources/v1/api.proto`` we use."""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FileDescriptorProto(
        name="gpuguardd/podresources_v1.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = f".{PACKAGE}.{type_name}"
    svc = f.service.add(name="PodResourcesLister")
    svc.method.add(name="List", input_type=f".{PACKAGE}.ListPodResourcesRequest",
                   output_type=f".{PACKAGE}.ListPodResourcesResponse")
    return f


_CLASSES: dict[str, Any] = {}


def message_classes() -> dict[str, Any]:
    """Message classes built from ``file_descriptor()`` in a private pool (no clash with any
    other ``v1`` package a process may load)."""
    if not _CLASSES:
        from google.protobuf import descriptor_pool, message_factory

        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_descriptor())
        for name in MESSAGES:
            desc = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
            _CLASSES[name] = message_factory.GetMessageClass(desc)
    return _CLASSES


# -- what the kubelet says -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Devices:
    resource: str  # "nvidia.com/gpu", "nvidia.com/mig-1g.10gb", or "dra:<driver>"
    ids: tuple[str, ...]  # GPU UUIDs, MIG UUIDs, DRA device names
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    namespace: str
    pod: str
    container: str
    devices: tuple[Devices, ...] = ()
    cpu_ids: tuple[int, ...] = ()

    @property
    def gpus(self) -> tuple[str, ...]:
        """The NVIDIA GPU / MIG devices of this container, in the kubelet's order."""
        out: list[str] = []
        for d in self.devices:
            if d.resource.startswith(GPU_RESOURCE_PREFIX) or d.resource.removeprefix(
                    "dra:") in DRA_GPU_DRIVERS:
                out.extend(i for i in d.ids if i not in out)
        return tuple(out)


def allocations_from_message(resp: Any) -> list[ContainerAllocation]:
    """``ListPodResourcesResponse`` -> one record per container."""
    out: list[ContainerAllocation] = []
    for pod in resp.pod_resources:
        for c in pod.containers:
            devices = [
                Devices(d.resource_name, tuple(d.device_ids),
                        tuple(int(n.ID) for n in d.topology.nodes))
                for d in c.devices
            ]
            for dyn in c.dynamic_resources:
                for claim in dyn.claim_resources:
                    if claim.device_name:
                        devices.append(Devices(f"dra:{claim.driver_name}",
                                               (claim.device_name,)))
            out.append(ContainerAllocation(pod.namespace, pod.name, c.name, tuple(devices),
                                           tuple(int(i) for i in c.cpu_ids)))
    return out


class PodResourcesClient:
    """A gRPC client of the kubelet's PodResources socket (one channel, reused per call)."""

    def __init__(self, socket_path: str = POD_RESOURCES_SOCKET, *, timeout_s: float = 2.0):
        try:
            import grpc
        except ImportError:
            raise DiscoveryError(
                "grpcio is not installed: install gpuguardd[kubernetes] for kubelet discovery"
            ) from None
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._grpc = grpc
        classes = message_classes()
        self._request_cls = classes["ListPodResourcesRequest"]
        self._channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._list: Callable[..., Any] = self._channel.unary_unary(
            LIST_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=classes["ListPodResourcesResponse"].FromString,
        )

    def list(self) -> list[ContainerAllocation]:
        try:
            resp = self._list(self._request_cls(), timeout=self.timeout_s)
        except self._grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = getattr(code, "name", "ERROR")
            raise DiscoveryError(f"kubelet {self.socket_path}: {name}: {details}") from None
        return allocations_from_message(resp)

    def close(self) -> None:
        self._channel.close()


# -- what the API server says --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    qos_class: str  # "Guaranteed" | "Burstable" | "BestEffort"
    pod_ip: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    container_ids: Mapping[str, str] = field(default_factory=dict)  # name -> runtime://id


def pods_from_json(doc: Any) -> list[PodInfo]:
    """A ``PodList`` (``/api/v1/pods``) -> the fields discovery needs; running pods only."""
    out: list[PodInfo] = []
    for item in doc.get("items", []) if isinstance(doc, dict) else []:
        meta, status = item.get("metadata", {}), item.get("status", {})
        if status.get("phase") not in (None, "Running", "Pending"):
            continue
        ids = {c.get("name", ""): c.get("containerID", "")
               for c in status.get("containerStatuses", []) or []}
        out.append(PodInfo(
            meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""),
            status.get("qosClass", "BestEffort"), status.get("podIP", "") or "",
            dict(meta.get("annotations", {}) or {}), ids))
    return out


class ApiServerPods:
    """Lists this node's pods with the pod's service account (in-cluster), or against
    ``base_url`` (tests, ``kubectl proxy``)."""

    def __init__(self, node: str, *, base_url: str | None = None,
                 sa_dir: Path = SERVICE_ACCOUNT, timeout_s: float = 5.0):
        self.node = node
        self.timeout_s = timeout_s
        self._headers: dict[str, str] = {"Accept": "application/json"}
        self._context: ssl.SSLContext | None = None
        if base_url is None:
            import os

            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise DiscoveryError("not in a cluster (KUBERNETES_SERVICE_HOST unset) and "
                                     "no API server URL given")
            base_url = f"https://{host}:{port}"
            try:
                token = (sa_dir / "token").read_text().strip()
            except OSError as e:
                raise DiscoveryError(f"service account token: {e}") from None
            self._headers["Authorization"] = f"Bearer {token}"
            self._context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
        self.base_url = base_url.rstrip("/")

    def list(self) -> list[PodInfo]:
        query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={self.node}"})
        url = f"{self.base_url}/api/v1/pods?{query}"
        if not url.startswith(("http://", "https://")):
            raise DiscoveryError(f"{url}: not an http(s) URL")
        req = urllib.request.Request(url, headers=self._headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s,  # noqa: S310
                                        context=self._context) as resp:
                return pods_from_json(json.loads(resp.read(MAX_MESSAGE_BYTES)))
        except (OSError, ValueError) as e:
            raise DiscoveryError(f"API server pods of node {self.node}: {e}") from None


# -- pod -> tenant -------------------------------------------------------------------------------
def pod_cgroup(pod: PodInfo, cgroup_root: Path) -> str | None:
    """The pod's cgroup relative to ``cgroup_root``, whichever cgroup driver the kubelet uses
    (systemd: ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice``,
    cgroupfs: ``kubepods/burstable/pod<uid>``). None when it does not exist (yet)."""
    qos = {"Guaranteed": "", "Burstable": "burstable", "BestEffort": "besteffort"}.get(
        pod.qos_class, "besteffort")
    uid = pod.uid
    systemd_uid = uid.replace("-", "_")
    if qos:
        candidates = [
            f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{systemd_uid}.slice",
            f"kubepods/{qos}/pod{uid}",
        ]
    else:
        candidates = [f"kubepods.slice/kubepods-pod{systemd_uid}.slice", f"kubepods/pod{uid}"]
    return next((c for c in candidates if (cgroup_root / c).is_dir()), None)


@dataclass(frozen=True)
class Discovery:
    tenants: tuple[TenantConfig, ...]
    gpus: Mapping[str, tuple[str, ...]]  # tenant -> all its GPU / MIG device ids
    skipped: tuple[tuple[str, str], ...]  # ("namespace/pod", why)


def _bool(v: str) -> bool | None:
    return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(
        v.strip().lower())


def _tenant_name(pod: PodInfo, ann: Mapping[str, str]) -> str:
    explicit = ann.get(ANNOTATION + "tenant")
    if explicit:
        return explicit
    name = re.sub(r"[^a-z0-9_-]", "-", f"{pod.namespace}-{pod.name}".lower())
    return name[:63]


def tenant_from_pod(pod: PodInfo, allocs: Sequence[ContainerAllocation],
                    cgroup_root: Path) -> tuple[TenantConfig, tuple[str, ...]]:
    """One opted-in pod -> a tenant. Raises ``ValueError`` with the reason otherwise.

    Annotations (all under ``gpuguard.io/``): ``enabled`` ("true" to opt in), ``tenant``
    (name; default ``<namespace>-<pod>``), ``class`` (latency | batch), ``ttft-p99-ms``,
    ``tpot-p99-ms``, ``restartable``, ``container`` (whose devices count; default every
    container with a GPU), ``metrics-port`` and ``metrics-flavor`` (vllm | sglang: scrape
    ``http://<pod IP>:<port>/metrics`` for latency instead of the push socket).
    """
    ann = {k.removeprefix(ANNOTATION): v for k, v in pod.annotations.items()
           if k.startswith(ANNOTATION)}
    if _bool(ann.get("enabled", "")) is not True:
        raise ValueError("not opted in (gpuguard.io/enabled)")
    name = _tenant_name(pod, {ANNOTATION + k: v for k, v in ann.items()})
    if not TENANT_NAME.match(name):
        raise ValueError(f"tenant name {name!r} does not match [a-z0-9_-]{{1,63}}")
    klass = ann.get("class", "batch")
    if klass not in ("latency", "batch"):
        raise ValueError(f"gpuguard.io/class {klass!r} is not latency or batch")
    slo: dict[str, float] = {}
    for key in ("ttft-p99-ms", "tpot-p99-ms"):
        if key in ann:
            try:
                value = float(ann[key])
            except ValueError:
                raise ValueError(f"gpuguard.io/{key} {ann[key]!r} is not a number") from None
            if not value > 0:
                raise ValueError(f"gpuguard.io/{key} must be > 0")
            slo[key.replace("-", "_")] = value
    if klass == "latency" and not slo:
        raise ValueError("a latency tenant needs gpuguard.io/ttft-p99-ms or tpot-p99-ms")
    restartable = None
    if "restartable" in ann:
        restartable = _bool(ann["restartable"])
        if restartable is None:
            raise ValueError(f"gpuguard.io/restartable {ann['restartable']!r} is not a boolean")
    wanted = ann.get("container")
    mine = [a for a in allocs if a.namespace == pod.namespace and a.pod == pod.name
            and (wanted is None or a.container == wanted)]
    gpus: list[str] = []
    for a in mine:
        gpus.extend(g for g in a.gpus if g not in gpus)
    latency = LatencySourceConfig()
    if "metrics-port" in ann:
        port = ann["metrics-port"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"gpuguard.io/metrics-port {port!r} is not a port")
        if not pod.pod_ip:
            raise ValueError("gpuguard.io/metrics-port set but the pod has no IP yet")
        flavor = ann.get("metrics-flavor", "vllm")
        if flavor not in ("vllm", "sglang"):
            raise ValueError(f"gpuguard.io/metrics-flavor {flavor!r} is not vllm or sglang")
        host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
        latency = LatencySourceConfig(source="prometheus", url=f"http://{host}:{port}/metrics",
                                      flavor=cast(Literal["vllm", "sglang"], flavor))
    tenant = TenantConfig(
        name=name,
        tenant_class=cast(Literal["latency", "batch"], klass),
        cgroup=pod_cgroup(pod, cgroup_root),
        restartable=restartable,
        gpu=gpus[0] if gpus else None,
        slo=SloConfig(ttft_p99_ms=slo.get("ttft_p99_ms"), tpot_p99_ms=slo.get("tpot_p99_ms")),
        latency=latency,
        hooks=HooksConfig(),
    )
    return tenant, tuple(gpus)


def discover(allocs: Iterable[ContainerAllocation], pods: Iterable[PodInfo], *,
             cgroup_root: Path = Path("/sys/fs/cgroup"),
             latency_namespaces: Collection[str] = (),
             namespaces: Collection[str] | None = None,
             reserved_names: Collection[str] = ()) -> Discovery:
    """Tenants for the opted-in pods of this node. A pod that cannot be a tenant is skipped
    with the reason, never guessed at; a tenant name claimed twice keeps the first pod.

    Annotations are written by pod owners, who are not trusted (SECURITY.md): a pod that calls
    itself ``latency`` makes the daemon throttle and move its neighbours for it. So
    ``latency`` is honoured only in the operator's ``latency_namespaces`` (none by default);
    ``namespaces`` (None: all) limits discovery altogether; ``reserved_names`` (the statically
    configured tenants) cannot be claimed by a pod.
    """
    allocs = list(allocs)
    tenants: list[TenantConfig] = []
    gpus: dict[str, tuple[str, ...]] = {}
    skipped: list[tuple[str, str]] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        ref = f"{pod.namespace}/{pod.name}"
        if not any(k.startswith(ANNOTATION) for k in pod.annotations):
            continue  # not ours to mention
        if namespaces is not None and pod.namespace not in namespaces:
            skipped.append((ref, f"namespace {pod.namespace!r} is not discovered"))
            continue
        try:
            tenant, devices = tenant_from_pod(pod, allocs, cgroup_root)
        except ValueError as e:
            skipped.append((ref, str(e)))
            continue
        if tenant.tenant_class == "latency" and pod.namespace not in latency_namespaces:
            skipped.append((ref, f"class latency is not allowed in namespace {pod.namespace!r} "
                                 "(operator's latency namespaces)"))
            continue
        if tenant.name in gpus or tenant.name in reserved_names:
            skipped.append((ref, f"tenant name {tenant.name!r} already taken"))
            continue
        tenants.append(tenant)
        gpus[tenant.name] = devices
    return Discovery(tuple(tenants), gpus, tuple(skipped))
