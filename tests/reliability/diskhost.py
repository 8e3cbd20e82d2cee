"""A Host whose "hardware" state lives in a JSON file, so that it outlives a killed daemon
process the way the kernel's cgroup limits and the GPU's MIG layout do.

``crash=("method", n)`` SIGKILLs the calling process right after the n-th call of ``method``
took effect - the worst moment: the host changed, the journal does not know yet.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpuguardd.host.protocol import LeverError
from gpuguardd.model.actions import IoLimit
from gpuguardd.model.snapshot import Placement, Snapshot
from gpuguardd.model.topology import GpuInfo, MigInstance, Topology

SIZES = {"1g.10gb": 1, "2g.20gb": 2, "3g.40gb": 4}
GPU0 = GpuInfo(0, "GPU-0", "A100", "0000:01:00.0", 0, None, "root0", 4, 16, 80 << 30, 108,
               mig_enabled=True)


@dataclass
class DiskHost:
    path: Path
    crash: tuple[str, int] | None = None
    #: profiles whose creation fails with a permanent error (GI made, CI refused: rolled back)
    broken_profiles: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._calls: dict[str, int] = {}
        if not self.path.exists():
            self._save({"limits": {}, "instances": {}, "stopped": [], "restarts": []})

    # -- persistence ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.path.read_text())
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def _done(self, method: str) -> None:
        n = self._calls[method] = self._calls.get(method, 0) + 1
        if self.crash == (method, n):
            os.kill(os.getpid(), signal.SIGKILL)

    # -- Host protocol -------------------------------------------------------------------------
    def topology(self) -> Topology:
        inst = tuple(sorted((MigInstance(0, int(k), v["profile"], v["start"],
                                         SIZES[v["profile"]], f"MIG-{k}")
                             for k, v in self.state()["instances"].items()),
                            key=lambda i: i.start))
        return Topology(gpus=(replace(GPU0, instances=inst),))

    def observe(self, now: float) -> Snapshot:
        return Snapshot(now, self.topology())

    def limit(self, tenant: str, device: str) -> IoLimit:
        raw = self.state()["limits"].get(f"{tenant}|{device}")
        return IoLimit(**raw) if raw else IoLimit()

    def get_io_limit(self, tenant: str, device: str) -> IoLimit:
        return self.limit(tenant, device)

    def set_io_limit(self, tenant: str, device: str, limit: IoLimit) -> None:
        doc = self.state()
        key = f"{tenant}|{device}"
        if limit.unlimited:
            doc["limits"].pop(key, None)
        else:
            doc["limits"][key] = {"rbps": limit.rbps, "wbps": limit.wbps,
                                  "riops": limit.riops, "wiops": limit.wiops}
        self._save(doc)
        self._done("set_io_limit")

    def restart_tenant(self, tenant: str, placement: Placement | None,
                       env: Mapping[str, str]) -> None:
        doc = self.state()
        doc["restarts"].append([tenant, None if placement is None else placement.gi_id,
                                dict(env)])
        doc["stopped"] = [t for t in doc["stopped"] if t != tenant]
        self._save(doc)
        self._done("restart_tenant")

    def stop_tenant(self, tenant: str) -> None:
        doc = self.state()
        doc["stopped"] = sorted({*doc["stopped"], tenant})
        self._save(doc)
        self._done("stop_tenant")

    def mig_destroy(self, gpu: int, gi_id: int) -> None:
        doc = self.state()
        doc["instances"].pop(str(gi_id), None)  # like NVML: a missing instance is done
        self._save(doc)
        self._done("mig_destroy")

    def mig_create(self, gpu: int, profile: str, start: int) -> MigInstance:
        if profile in self.broken_profiles:
            raise LeverError(f"create compute instance in {profile}@{start}: Not Supported",
                             permanent=True)
        doc = self.state()
        want = set(range(start, start + SIZES[profile]))
        for v in doc["instances"].values():
            if want & set(range(v["start"], v["start"] + SIZES[v["profile"]])):
                raise LeverError(f"{profile}@{start}: slices occupied (Insufficient Resources)",
                                 retry_after_s=10.0)
        gi = next(i for i in range(1, 64) if str(i) not in doc["instances"])
        doc["instances"][str(gi)] = {"profile": profile, "start": start}
        self._save(doc)
        self._done("mig_create")
        return MigInstance(gpu, gi, profile, start, SIZES[profile], f"MIG-{gi}")

    def set_vgpu(self, tenant: str, compute_pct: int, memory_bytes: int) -> None:
        raise LeverError("no HAMi here", permanent=True)

    def close(self) -> None:
        pass
