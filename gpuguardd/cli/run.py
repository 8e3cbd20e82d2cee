"""``gpuguardd run``: the daemon."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from gpuguardd import config

DEFAULT_CONFIG = "/etc/gpuguardd/gpuguardd.toml"


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--sim", nargs="?", const="noisy-neighbor", metavar="SCENARIO",
                   help="run on the simulated host (built-in scenario name or file; "
                        "default noisy-neighbor)")
    p.add_argument("--dry-run", action="store_true", help="decide and log, write nothing")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per real second (with --sim)")
    p.add_argument("--listen", help="override [metrics].listen, host:port")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from gpuguardd.app.daemon import StartupError, build, install_signal_handlers
    from gpuguardd.export import logs

    logs.setup(args.log_level)
    if args.speed <= 0:
        print("gpuguardd: --speed must be > 0", file=sys.stderr)
        return 2
    path = args.config or DEFAULT_CONFIG
    if args.config is None and args.sim is not None and not Path(path).exists():
        cfg, path_used = config.Config(), None
    else:
        try:
            cfg, path_used = config.load(path, trusted_only=True), path
        except config.ConfigError as e:
            for err in e.errors:
                print(f"{path}: {err}", file=sys.stderr)
            return 2
    # Handlers before build: a SIGTERM while starting (journal recovery, NVML init) must
    # still end in a clean stop that restores what was re-adopted, not the default kill.
    stop, reload = threading.Event(), threading.Event()
    install_signal_handlers(stop, reload)
    try:
        daemon = build(cfg, config_path=path_used, sim=args.sim, speed=args.speed,
                       dry_run=args.dry_run, listen=args.listen)
    except StartupError as e:
        print(f"gpuguardd: {e}", file=sys.stderr)
        return 1
    daemon.run(stop, reload)
    return 0
