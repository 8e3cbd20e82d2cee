"""``gpuguardd probe [--json]``: what the real host offers (read-only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"


def register(sub: Any) -> None:
    p = sub.add_parser("probe", help="show GPUs, MIG, PCIe tree, NUMA, disks, cgroups, levers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fs-root", default="/",
                   help="root holding sys/ and proc/ (e.g. the host's, mounted in a container)")
    p.add_argument("--cgroup-root", default=DEFAULT_CGROUP_ROOT, help="cgroup filesystem root")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from gpuguardd.host.paths import HostPaths
    from gpuguardd.host.probe import probe, render

    try:
        info = probe(HostPaths.of(args.fs_root, args.cgroup_root))
    except OSError as e:
        print(f"gpuguardd probe: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(info))
    return 0
