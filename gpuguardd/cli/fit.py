"""``gpuguardd fit --data FILE.csv --out model.json [--held-out F] [--seed N]``.

Fits the TTFT/TPOT predictors per (model, GPU) found in the profile CSV (schema in
``gpuguardd.vgpu.profile_data``) and reports R² and MAPE on held-out rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gpuguardd.vgpu.gpus import GPUS
from gpuguardd.vgpu.profile_data import ProfileCsvError, group, parse_csv


def register(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit TTFT/TPOT predictors from a profile CSV")
    p.add_argument("--data", required=True, metavar="FILE.csv")
    p.add_argument("--out", required=True, metavar="model.json")
    p.add_argument("--held-out", type=float, default=0.25,
                   help="fraction of rows kept out of the fit for R²/MAPE (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    # scipy loads only when the command runs
    from gpuguardd.vgpu.fitting import fit
    from gpuguardd.vgpu.predictor import DEFAULT_PCIE_BPS, PredictorError, predictors_to_json

    if not 0.0 <= args.held_out < 1.0:
        print("--held-out: must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        text = Path(args.data).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"{args.data}: cannot read: {e}", file=sys.stderr)
        return 2
    try:
        rows = parse_csv(text)
    except ProfileCsvError as e:
        for err in e.errors:
            print(f"{args.data}: {err}", file=sys.stderr)
        return 2
    preds = []
    print(f"{'model':<32} {'gpu':<16} {'rows':>5} {'TTFT R²':>8} {'MAPE':>6} {'TPOT R²':>8} "
          f"{'MAPE':>6}")
    for (model, gpu), group_rows in sorted(group(rows).items()):
        spec = GPUS.get(gpu)
        try:
            pred = fit(group_rows, held_out=args.held_out, seed=args.seed,
                       pcie_bps=spec.pcie_bps if spec else DEFAULT_PCIE_BPS)
        except PredictorError as e:
            print(f"{args.data}: ({model}, {gpu}): {e}", file=sys.stderr)
            return 2
        preds.append(pred)
        q = pred.quality
        if q:
            print(f"{model:<32} {gpu:<16} {len(group_rows):>5} {q['ttft'].r2:>8.3f} "
                  f"{100 * q['ttft'].mape:>5.1f}% {q['tpot'].r2:>8.3f} "
                  f"{100 * q['tpot'].mape:>5.1f}%")
        else:
            print(f"{model:<32} {gpu:<16} {len(group_rows):>5} (no held-out rows)")
    try:
        Path(args.out).write_text(json.dumps(predictors_to_json(preds), indent=2) + "\n",
                                  encoding="utf-8")
    except OSError as e:
        print(f"{args.out}: cannot write: {e}", file=sys.stderr)
        return 1
    return 0
