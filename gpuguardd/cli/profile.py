"""``gpuguardd profile``: measure TTFT/TPOT across shares x concurrency, write the profile CSV.

    gpuguardd profile --url http://127.0.0.1:8000 --model Qwen3-4B --gpu A100-SXM4-80GB \\
        --shares 20,40,60,80,100 --concurrency 1,2,4,8 \\
        --restart-hook '["systemctl", "restart", "vllm-qwen.service"]' --out qwen.csv

Hooks and server commands are JSON argv arrays, run without a shell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gpuguardd.host.profiler import ProfileError, Sweep, Target, run
from gpuguardd.vgpu.profile_data import to_csv


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one value")
    return vals


def _argv(text: str) -> list[str]:
    try:
        v = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a JSON array of strings, got {text!r}") from None
    if not isinstance(v, list) or not v or not all(isinstance(a, str) and a for a in v):
        raise argparse.ArgumentTypeError("expected a non-empty JSON array of strings")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("profile", help="profile an OpenAI-compatible server across vGPU shares")
    p.add_argument("--url", required=True, help="base URL of the server")
    p.add_argument("--model", required=True, help="model name sent in requests and in the CSV")
    p.add_argument("--gpu", required=True, help="GPU model for the CSV, e.g. A100-SXM4-80GB")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    p.add_argument("--shares", type=_ints, default=[20, 40, 60, 80, 100])
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=2, help="rounds of requests per point")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--memory-bytes", type=int, help="CUDA_DEVICE_MEMORY_LIMIT for the server")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--restart-hook", type=_argv, help="argv (JSON) restarting the server")
    how.add_argument("--server", type=_argv, help="argv (JSON) of the server to run per share")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per request")
    p.add_argument("--deadline-s", type=float, default=3600.0, help="whole sweep")
    p.add_argument("--out", required=True, metavar="FILE.csv")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if min(args.shares) < 1 or max(args.shares) > 100 or min(args.concurrency) < 1:
        print("--shares must be 1..100 and --concurrency >= 1", file=sys.stderr)
        return 2
    target = Target(args.url, args.model, args.gpu, args.chat, args.prompt_tokens,
                    args.output_tokens, args.timeout_s)
    sweep = Sweep(args.shares, args.concurrency, args.rounds, args.memory_bytes,
                  args.restart_hook, args.server, deadline_s=args.deadline_s)
    try:
        rows = run(target, sweep, on_row=lambda r: print(
            f"share {r.share_pct:g} % concurrency {r.batch_size}: TTFT {r.ttft_ms:.1f} ms, "
            f"TPOT {r.tpot_ms:.1f} ms", flush=True))
    except ProfileError as e:
        print(f"profile: {e}", file=sys.stderr)
        return 1
    try:
        Path(args.out).write_text(to_csv(rows), encoding="utf-8")
    except OSError as e:
        print(f"{args.out}: {e}", file=sys.stderr)
        return 1
    return 0
