"""``gpuguardd check-config FILE``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpuguardd import config


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.file)
        if cfg.vgpu.enabled:  # the files it names, the GPU model: what the daemon checks at start
            from gpuguardd.runtime.engine import policy_for

            policy_for(cfg).initial(cfg)
    except config.ConfigError as e:
        for err in e.errors:
            print(f"{args.file}: {err}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(cfg.tenants)} tenants, policy {cfg.policy.name})")
    return 0
