"""Kubernetes tenant discovery wired into the daemon (``[kubernetes] enabled = true``).

The library (``gpuguardd.host.kubelet``, grpcio) is imported only here and only when
discovery runs, so a daemon without Kubernetes never loads grpc. Each discovery opens its own
kubelet channel and API server request, bounded by ``timeout_s``, and closes them: nothing
is kept between two discoveries, and a changed ``[kubernetes]`` section applies at the next.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import structlog

from gpuguardd.config import Config, TenantConfig

log = structlog.get_logger("gpuguardd.discovery")


class TenantDiscoveryError(Exception):
    """Discovery failed; the message says which source and why."""


def discover_tenants(cfg: Config) -> tuple[TenantConfig, ...]:
    """The tenants of this node's opted-in pods; the configured tenants' names are reserved
    (a pod cannot claim them). Skipped pods are logged with the reason."""
    k = cfg.kubernetes
    from gpuguardd.host import kubelet

    node = os.environ.get(k.node_name_env, "")
    if not node:
        raise TenantDiscoveryError(
            f"environment variable {k.node_name_env} (kubernetes.node_name_env) is unset: "
            "set it from the downward API (spec.nodeName)")
    try:
        client = kubelet.PodResourcesClient(k.pod_resources_socket, timeout_s=k.timeout_s)
        try:
            allocs = client.list()
        finally:
            client.close()
        pods = kubelet.ApiServerPods(node, base_url=k.api_server or None,
                                     timeout_s=k.timeout_s).list()
    except kubelet.DiscoveryError as e:
        raise TenantDiscoveryError(str(e)) from None
    found = kubelet.discover(
        allocs, pods, cgroup_root=Path(cfg.daemon.cgroup_root),
        latency_namespaces=frozenset(k.latency_namespaces),
        namespaces=None if k.namespaces is None else frozenset(k.namespaces),
        reserved_names=frozenset(t.name for t in cfg.tenants))
    for ref, why in found.skipped:
        log.info("pod_skipped", pod=ref, reason=why)
    return found.tenants


def merged(cfg: Config, discovered: tuple[TenantConfig, ...]) -> Config:
    """The configured tenants, then the discovered ones whose names are free (configured
    names win)."""
    taken = {t.name for t in cfg.tenants}
    extra = tuple(t for t in discovered if t.name not in taken)
    if not extra:
        return cfg
    return dataclasses.replace(cfg, tenants=cfg.tenants + extra)
