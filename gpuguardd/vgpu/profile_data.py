"""Profile rows: the CSV that ``gpuguardd profile`` writes and ``gpuguardd fit`` reads.

CSV schema (header row required, columns in any order, extra columns are an error):

============================  ======================================================  =========
column                        meaning                                                 required
============================  ======================================================  =========
``model``                     model name (built-in name or the tenant's label)        yes
``gpu``                       GPU model, e.g. ``A100-SXM4-80GB``                       yes
``batch_size``                concurrent requests (integer >= 1)                      yes
``share_pct``                 HAMi compute share, percent (0 < x <= 100)              yes
``colocated``                 number of co-running containers on the GPU (>= 0)       yes
``sm_activity_others``        co-runners' summed SM activity, fraction (>= 0)         yes
``dram_activity_others``      co-runners' summed DRAM activity, fraction (>= 0)       yes
``ttft_ms``                   mean time to first token of the run, ms (> 0)           yes
``tpot_ms``                   mean time per output token of the run, ms (> 0)         yes
``prompt_tokens``             prompt length of the run's requests (default 512)       no
``output_tokens``             output length of the run's requests (default 128)       no
============================  ======================================================  =========
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields

DEFAULT_PROMPT_TOKENS = 512
DEFAULT_OUTPUT_TOKENS = 128


@dataclass(frozen=True, slots=True)
class ProfileRow:
    model: str
    gpu: str
    batch_size: int
    share_pct: float
    colocated: int
    sm_activity_others: float
    dram_activity_others: float
    ttft_ms: float
    tpot_ms: float
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    output_tokens: int = DEFAULT_OUTPUT_TOKENS


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ProfileRow))
REQUIRED: tuple[str, ...] = COLUMNS[:9]


class ProfileCsvError(ValueError):
    """Problems of a profile CSV, each ``line N, column C: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# column -> (type, lower bound, lower bound inclusive?, upper bound)
_CHECKS: dict[str, tuple[type, float | None, bool, float | None]] = {
    "batch_size": (int, 1, True, None),
    "share_pct": (float, 0, False, 100),
    "colocated": (int, 0, True, None),
    "sm_activity_others": (float, 0, True, None),
    "dram_activity_others": (float, 0, True, None),
    "ttft_ms": (float, 0, False, None),
    "tpot_ms": (float, 0, False, None),
    "prompt_tokens": (int, 1, True, None),
    "output_tokens": (int, 1, True, None),
}


def _value(col: str, raw: str, where: str, errors: list[str]) -> object:
    if col in ("model", "gpu"):
        if not raw.strip():
            errors.append(f"{where}: must not be empty")
        return raw.strip()
    tp, lo, lo_incl, hi = _CHECKS[col]
    try:
        v: float = int(raw) if tp is int else float(raw)
    except ValueError:
        errors.append(f"{where}: expected {'an integer' if tp is int else 'a number'}, got {raw!r}")
        return None
    if v != v or v in (float("inf"), float("-inf")):
        errors.append(f"{where}: must be finite, got {raw!r}")
        return None
    if lo is not None and (v < lo or (v == lo and not lo_incl)):
        errors.append(f"{where}: must be {'>=' if lo_incl else '>'} {lo:g}, got {raw}")
        return None
    if hi is not None and v > hi:
        errors.append(f"{where}: must be <= {hi:g}, got {raw}")
        return None
    return v


def parse_csv(text: str, *, max_errors: int = 50) -> list[ProfileRow]:
    """Parse and validate; every error names its line (1 = header) and column."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ProfileCsvError(["line 1: empty file, expected a header row"]) from None
    errors: list[str] = []
    for i, h in enumerate(header):
        if h not in COLUMNS:
            errors.append(f"line 1, column {i + 1} ({h!r}): unknown column; "
                          f"expected {', '.join(COLUMNS)}")
        elif header.index(h) != i:
            errors.append(f"line 1, column {i + 1} ({h!r}): duplicate column")
    for col in REQUIRED:
        if col not in header:
            errors.append(f"line 1: required column {col!r} is missing")
    if errors:
        raise ProfileCsvError(errors)
    rows: list[ProfileRow] = []
    for record in reader:
        line = reader.line_num
        if not record or all(not c.strip() for c in record):
            continue
        if len(record) != len(header):
            errors.append(f"line {line}: expected {len(header)} fields, got {len(record)}")
        else:
            values: dict[str, object] = {}
            before = len(errors)
            for col, raw in zip(header, record, strict=True):
                values[col] = _value(col, raw, f"line {line}, column {col!r}", errors)
            if len(errors) == before:
                rows.append(ProfileRow(**values))  # type: ignore[arg-type]
        if len(errors) >= max_errors:
            errors.append("too many errors, stopping")
            break
    if errors:
        raise ProfileCsvError(errors)
    if not rows:
        raise ProfileCsvError(["line 2: no data rows"])
    return rows


def to_csv(rows: Iterable[ProfileRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(_fmt(v) for v in astuple(r))
    return out.getvalue()


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def group(rows: Sequence[ProfileRow]) -> dict[tuple[str, str], list[ProfileRow]]:
    out: dict[tuple[str, str], list[ProfileRow]] = {}
    for r in rows:
        out.setdefault((r.model, r.gpu), []).append(r)
    return out
