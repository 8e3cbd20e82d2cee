"""``gpuguardd probe``: what this host offers - GPUs, MIG, PCIe tree, NUMA, disks, cgroups and
which levers are usable. Read-only; works (and says so) on a host without GPUs."""

from __future__ import annotations

import os
import shutil
from typing import Any

from gpuguardd.host.cgroup_io import CgroupVersion, detect_version, v2_io_available
from gpuguardd.host.mps import SAFE_PATH, MpsControl
from gpuguardd.host.nvml import NOT_SUPPORTED, Nvml
from gpuguardd.host.paths import HostPaths
from gpuguardd.host.topology import PciPlacement, SysfsTopology


def _val(v: object) -> object:
    return "not supported" if v is NOT_SUPPORTED else v


def probe(paths: HostPaths, nvml: Nvml | None = None, mps: MpsControl | None = None
          ) -> dict[str, Any]:
    nv = nvml if nvml is not None else Nvml()
    sysfs = SysfsTopology(paths)
    places: list[PciPlacement] = []
    gpus: list[dict[str, Any]] = []
    if nv.available():
        for i in range(nv.count()):
            st = nv.static(i)
            place = sysfs.placement(st.pci_bus_id) if st.pci_bus_id else None
            if place is not None:
                places.append(place)
            gpus.append({
                "index": i, "uuid": st.uuid, "name": st.name, "pci_bus_id": st.pci_bus_id,
                "numa_node": place.numa_node if place else None,
                "root_port": place.root if place else None,
                "switches": list(place.switches) if place else [],
                "pcie_gen": _val(st.pcie_gen), "pcie_width": _val(st.pcie_width),
                "pcie_max_gen": _val(st.pcie_max_gen), "pcie_max_width": _val(st.pcie_max_width),
                "memory_bytes": st.memory_bytes, "sm_count": st.sm_count,
                "mig_enabled": st.mig_enabled, "gpm": st.gpm,
                "mig_profiles": [
                    {"name": p.name, "create_id": p.create_id, "compute_slices": p.compute_slices,
                     "memory_slices": p.memory_slices, "sm_count": p.sm_count,
                     "memory_bytes": p.memory_bytes, "placements": list(p.placements)}
                    for p in (nv.mig_profiles(i) if st.mig_enabled else ())],
                "mig_instances": [
                    {"gi_id": m.gi_id, "profile": m.profile, "start": m.start, "size": m.size,
                     "uuid": m.uuid} for m in st.instances],
            })
    disks = sysfs.block_devices()
    nics = sysfs.nics()
    places += [p for _, p in disks if p is not None]
    places += [n.placement for n in nics if n.placement is not None]
    switches = sysfs.switches_for(places)

    def below(name: str) -> list[str]:
        return sorted({p.bus_id for p in places if name == p.root or name in p.switches})

    cg_version = detect_version(paths.cgroup)
    io_usable, io_why = _io_lever(paths, cg_version)
    ctl = mps if mps is not None else MpsControl()
    mps_exe = ctl.executable()
    mps_up = ctl.available() if mps_exe else False
    any_mig = any(g["mig_enabled"] for g in gpus)
    return {
        "nvml": {"available": nv.available(), "error": nv.init_error, "gpus": len(gpus)},
        "nvidia_pci_devices": list(sysfs.nvidia_pci_devices()),
        "gpus": gpus,
        "pcie": [{"name": s.name, "kind": "root port" if s.parent is None else "switch",
                  "parent": s.parent, "numa_node": s.numa_node, "gen": s.gen, "width": s.width,
                  "uplink_bps": s.uplink_bps, "devices": below(s.name)} for s in switches],
        "numa_nodes": [{"node": n.node, "cpus": _cpulist(n.cpus)} for n in sysfs.numa_nodes()],
        "block_devices": [{"name": d.name, "devno": d.devno, "numa_node": d.numa_node,
                           "root": p.root if p else None, "switch": d.switch}
                          for d, p in disks],
        "nics": [{"name": n.name, "numa_node": n.placement.numa_node if n.placement else None,
                  "root": n.placement.root if n.placement else None,
                  "switch": n.placement.switch if n.placement else None} for n in nics],
        "cgroup": {"root": str(paths.cgroup),
                   "version": cg_version.value if cg_version else None},
        "levers": {
            "io_throttle": {"usable": io_usable, "detail": io_why},
            "tenant_hooks": {"usable": True, "detail": (
                "argv hooks; systemd services without hooks use systemctl --no-block"
                if shutil.which("systemctl", path=SAFE_PATH) else
                "argv hooks only (no systemctl here)")},
            "mps": {"usable": mps_up, "detail": (
                "control daemon answers" if mps_up else
                f"{ctl.binary} found but no control daemon answers" if mps_exe else
                f"{ctl.binary} not installed")},
            "mig": {"usable": any_mig, "detail": (
                "MIG enabled on GPU " + ", ".join(str(g["index"]) for g in gpus
                                                  if g["mig_enabled"]) if any_mig else
                "no MIG-enabled GPU" if gpus else "no GPU")},
            "vgpu": {"usable": False, "detail": "HAMi backend not wired into the real host yet"},
        },
    }


def _io_lever(paths: HostPaths, version: CgroupVersion | None) -> tuple[bool, str]:
    root = paths.cgroup
    if version is CgroupVersion.V2:
        if not v2_io_available(root):
            return False, f"cgroup v2 at {root}, but the io controller is not available"
        try:
            sub = (root / "cgroup.subtree_control").read_text().split()
        except OSError:
            sub = []
        note = "" if "io" in sub else " (enable it: echo +io > cgroup.subtree_control)"
        return "io" in sub, f"cgroup v2 io.max at {root}{note}"
    if version is CgroupVersion.V1:
        f = root / "blkio" / "blkio.throttle.write_bps_device"
        if not os.access(f, os.W_OK):
            return False, f"cgroup v1 blkio at {root / 'blkio'}, not writable by this user"
        return True, f"cgroup v1 blkio.throttle at {root / 'blkio'}"
    return False, f"no cgroup v2 io controller or v1 blkio hierarchy at {root}"


def _cpulist(cpus: tuple[int, ...]) -> str:
    parts: list[str] = []
    start = prev = None
    for c in cpus:
        if start is None:
            start = prev = c
        elif prev is not None and c == prev + 1:
            prev = c
        else:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = c
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(parts)


def render(info: dict[str, Any]) -> str:
    """The human-readable report."""
    out: list[str] = []
    nv = info["nvml"]
    if info["gpus"]:
        out.append(f"GPUs ({len(info['gpus'])}):")
        for g in info["gpus"]:
            out.append(f"  [{g['index']}] {g['name']} {g['uuid']} at {g['pci_bus_id']}, "
                       f"NUMA {g['numa_node']}, PCIe gen {g['pcie_gen']} x{g['pcie_width']}, "
                       f"{g['memory_bytes'] / 2**30:.0f} GiB, {g['sm_count']} SMs"
                       + (", GPM" if g["gpm"] else ""))
            path = " -> ".join([g["root_port"] or "?", *g["switches"], g["pci_bus_id"]])
            out.append(f"      PCIe path: {path}")
            if g["mig_enabled"]:
                out.append("      MIG: enabled; profiles " + ", ".join(
                    f"{p['name']}(id {p['create_id']}, at {p['placements']})"
                    for p in g["mig_profiles"]))
                for m in g["mig_instances"]:
                    out.append(f"        gi {m['gi_id']}: {m['profile']} slices "
                               f"{m['start']}..{m['start'] + m['size'] - 1} {m['uuid']}")
            else:
                out.append("      MIG: disabled or not supported")
    else:
        extra = (f"; NVIDIA PCI devices present: {', '.join(info['nvidia_pci_devices'])}"
                 if info["nvidia_pci_devices"] else "")
        out.append(f"GPUs: none - no NVIDIA GPU usable through NVML "
                   f"({nv['error'] or 'NVML reports 0 GPUs'}){extra}")
    out.append("PCIe tree:")
    for s in info["pcie"]:
        parent = f" under {s['parent']}" if s["parent"] else ""
        out.append(f"  {s['kind']} {s['name']}{parent}: NUMA {s['numa_node']}, "
                   f"gen {s['gen']} x{s['width']} ({s['uplink_bps'] / 1e9:.1f} GB/s); "
                   f"devices {', '.join(s['devices']) or '-'}")
    if not info["pcie"]:
        out.append("  no root ports or switches above the devices of interest")
    out.append("NUMA nodes: " + "; ".join(f"node {n['node']}: CPUs {n['cpus']}"
                                          for n in info["numa_nodes"]))
    out.append("Block devices: " + ("; ".join(
        f"{d['name']} ({d['devno']}, NUMA {d['numa_node']}, root {d['root']}"
        + (f", switch {d['switch']}" if d["switch"] else "") + ")"
        for d in info["block_devices"]) or "none"))
    out.append("NICs: " + ("; ".join(f"{n['name']} (NUMA {n['numa_node']}, root {n['root']})"
                                     for n in info["nics"]) or "none"))
    cg = info["cgroup"]
    out.append(f"cgroup: {cg['version'] or 'no io/blkio controller'} at {cg['root']}")
    out.append("Levers:")
    for name, lv in info["levers"].items():
        out.append(f"  {name:13s} {'usable' if lv['usable'] else 'unavailable':11s} "
                   f"{lv['detail']}")
    return "\n".join(out) + "\n"
