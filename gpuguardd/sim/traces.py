"""Request traces: Azure LLM inference CSV and Mooncake JSONL, time-scalable.

Both loaders return a :class:`Trace` whose times start at 0 (the first request) in seconds.
``scale`` multiplies the request rate: times are divided by it (2.0 = twice the requests per
second, same requests). Malformed files raise :class:`TraceError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Mooncake's trace hashes prompts in blocks of this many tokens (hash_ids, one per block)
MOONCAKE_BLOCK_TOKENS = 512


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in arrival order. ``cached_tokens`` is -1 when the trace says nothing about
    prefix-cache hits (the tenant's ``prefix_hit_rate`` then decides)."""

    times_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    cached_tokens: npt.NDArray[np.int64]
    source: str = ""

    def __len__(self) -> int:
        return int(self.times_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.times_s[-1]) if len(self) else 0.0

    def scaled(self, scale: float) -> Trace:
        if not scale > 0:
            raise TraceError(f"scale must be > 0, got {scale}")
        return Trace(self.times_s / scale, self.prompt_tokens, self.output_tokens,
                     self.cached_tokens, self.source)


def _finish(times: list[float], prompts: list[int], outs: list[int], cached: list[int],
            source: str, scale: float) -> Trace:
    if not times:
        raise TraceError(f"{source}: no requests")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    tr = Trace(t, np.asarray(prompts, dtype=np.int64)[order],
               np.asarray(outs, dtype=np.int64)[order],
               np.asarray(cached, dtype=np.int64)[order], source)
    return tr.scaled(scale)


def _positive_int(text: object, what: str, where: str, *, allow_zero: bool = False) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise TraceError(f"{where}: {what} {text!r} is not an integer") from None
    if v < 0 or (v == 0 and not allow_zero):
        raise TraceError(f"{where}: {what} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def load_azure(path: str | Path, scale: float = 1.0) -> Trace:
    """Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    TIMESTAMP is ``YYYY-MM-DD HH:MM:SS.fffffff`` (seven fractional digits, more than
    ``datetime`` parses, so the fraction is read separately).
    """
    p = Path(path)
    times: list[float] = []
    prompts: list[int] = []
    outs: list[int] = []
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            want = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
            if header is None or [h.strip() for h in header] != want:
                raise TraceError(f"{p}:1: expected header {','.join(want)}, got {header}")
            for lineno, row in enumerate(reader, start=2):
                where = f"{p}:{lineno}"
                if not row:
                    continue
                if len(row) != 3:
                    raise TraceError(f"{where}: expected 3 fields, got {len(row)}")
                times.append(_azure_time(row[0], where))
                prompts.append(_positive_int(row[1], "ContextTokens", where))
                outs.append(_positive_int(row[2], "GeneratedTokens", where))
    except FileNotFoundError:
        raise TraceError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{p}: cannot read: {e}") from None
    return _finish(times, prompts, outs, [-1] * len(times), str(p), scale)


def _azure_time(text: str, where: str) -> float:
    s = text.strip()
    base, _, frac = s.partition(".")
    try:
        dt = datetime.strptime(base, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {text!r} is not YYYY-MM-DD HH:MM:SS[.f]") from None
    if frac and not frac.isdigit():
        raise TraceError(f"{where}: TIMESTAMP {text!r} has a bad fraction")
    return dt.replace(tzinfo=UTC).timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


def load_mooncake(path: str | Path, scale: float = 1.0) -> Trace:
    """Mooncake JSONL: ``{"timestamp": ms, "input_length": n, "output_length": m,
    "hash_ids": [...]}`` per line. A request's cached prefix is its leading run of hash blocks
    already seen in earlier requests (what a prefix cache with unbounded host memory holds)."""
    p = Path(path)
    times: list[float] = []
    prompts: list[int] = []
    outs: list[int] = []
    cached: list[int] = []
    seen: set[int] = set()
    try:
        with p.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                where = f"{p}:{lineno}"
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TraceError(f"{where}: not JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise TraceError(f"{where}: expected a JSON object")
                for key in ("timestamp", "input_length", "output_length"):
                    if key not in rec:
                        raise TraceError(f"{where}: missing {key!r}")
                ts = rec["timestamp"]
                if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0:
                    raise TraceError(f"{where}: timestamp must be a number of ms >= 0")
                n_in = _positive_int(rec["input_length"], "input_length", where)
                n_out = _positive_int(rec["output_length"], "output_length", where)
                hashes = rec.get("hash_ids", [])
                if not isinstance(hashes, list) or not all(
                    isinstance(h, int) and not isinstance(h, bool) for h in hashes
                ):
                    raise TraceError(f"{where}: hash_ids must be a list of integers")
                hits = 0
                for h in hashes:
                    if h not in seen:
                        break
                    hits += 1
                seen.update(hashes)
                times.append(float(ts) / 1000.0)
                prompts.append(n_in)
                outs.append(n_out)
                # the last block is never served from cache: at least one token is computed
                cached.append(min(hits * MOONCAKE_BLOCK_TOKENS, n_in - 1))
    except FileNotFoundError:
        raise TraceError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{p}: cannot read: {e}") from None
    return _finish(times, prompts, outs, cached, str(p), scale)


def load_trace(path: str | Path, fmt: str, scale: float = 1.0) -> Trace:
    if fmt == "azure":
        return load_azure(path, scale)
    if fmt == "mooncake":
        return load_mooncake(path, scale)
    raise TraceError(f"unknown trace format {fmt!r} (azure | mooncake)")
