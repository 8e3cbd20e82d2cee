"""Profiling client: sweep shares x concurrency against an OpenAI-compatible streaming endpoint.

For each share the server is restarted with ``CUDA_DEVICE_SM_LIMIT`` (percent) and
``CUDA_DEVICE_MEMORY_LIMIT`` (MiB, HAMi's ``<n>m`` form) in its environment — either by running a
restart hook argv to completion (no shell), or by owning the server process (``server_argv``) —
then waits until ``GET /v1/models`` answers. For each concurrency c, rounds of c simultaneous
streaming requests (``stream: true``, server-sent events) are timed:

    TTFT = time from sending the request to the first event carrying text
    TPOT = mean gap between consecutive text events of a request

Each (share, concurrency) gives one CSV row (``gpuguardd.vgpu.profile_data`` schema) with the
means over its requests. Every network call has a timeout; a sweep has an overall deadline.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gpuguardd.vgpu.profile_data import ProfileRow

MIB = 1 << 20


class ProfileError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # base URL, e.g. http://127.0.0.1:8000
    model: str
    gpu: str
    chat: bool = False  # /v1/chat/completions instead of /v1/completions
    prompt_tokens: int = 512
    output_tokens: int = 64
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Sweep:
    shares_pct: Sequence[int]
    concurrency: Sequence[int]
    rounds: int = 2
    memory_bytes: int | None = None
    restart_hook: Sequence[str] | None = None
    server_argv: Sequence[str] | None = None
    ready_timeout_s: float = 120.0
    deadline_s: float = 3600.0
    colocated: int = 0
    sm_activity_others: float = 0.0
    dram_activity_others: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timing:
    ttft_s: float
    gaps_s: tuple[float, ...]


def _conn(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProfileError(f"{url}: expected http(s)://host[:port]")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout_s), parts.path.rstrip("/")


def stream_once(target: Target) -> Timing:
    """One streaming request; raises ProfileError on HTTP or protocol errors."""
    conn, prefix = _conn(target.url, target.timeout_s)
    prompt = " ".join(["hello"] * target.prompt_tokens)
    body: dict[str, object] = {"model": target.model, "max_tokens": target.output_tokens,
                               "stream": True, "temperature": 0}
    if target.chat:
        path = f"{prefix}/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        path = f"{prefix}/v1/completions"
        body["prompt"] = prompt
    try:
        start = time.monotonic()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                       "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise ProfileError(f"POST {path}: HTTP {resp.status} {resp.reason}")
        stamps: list[float] = []
        while True:
            line = resp.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("data:"):
                continue
            data = text[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
                choice = event["choices"][0]
                piece = choice.get("text") if not target.chat else (
                    choice.get("delta", {}).get("content"))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise ProfileError(f"POST {path}: malformed event {data[:80]!r}") from None
            if piece:
                stamps.append(time.monotonic())
    except (OSError, http.client.HTTPException) as e:
        raise ProfileError(f"POST {path}: {e}") from None
    finally:
        conn.close()
    if not stamps:
        raise ProfileError(f"POST {path}: the stream carried no tokens")
    gaps = tuple(b - a for a, b in itertools.pairwise(stamps))
    return Timing(stamps[0] - start, gaps)


def measure(target: Target, concurrency: int, rounds: int) -> list[Timing]:
    out: list[Timing] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            t = stream_once(target)
            with lock:
                out.append(t)
        except ProfileError as e:
            with lock:
                errors.append(str(e))

    for _ in range(rounds):
        threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(target.timeout_s + 5.0)
        if errors:
            raise ProfileError(errors[0])
    return out


def wait_ready(target: Target, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        conn, prefix = _conn(target.url, min(2.0, timeout_s))
        try:
            conn.request("GET", f"{prefix}/v1/models")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException) as e:
            last = str(e)
        finally:
            conn.close()
        time.sleep(0.1)
    raise ProfileError(f"{target.url}: not ready after {timeout_s:g} s ({last})")


def share_env(share_pct: int, memory_bytes: int | None) -> dict[str, str]:
    env = {"CUDA_DEVICE_SM_LIMIT": str(share_pct)}
    if memory_bytes is not None:
        env["CUDA_DEVICE_MEMORY_LIMIT"] = f"{-(-memory_bytes // MIB)}m"
    return env


def run(
    target: Target, sweep: Sweep, on_row: Callable[[ProfileRow], None] | None = None
) -> list[ProfileRow]:
    if (sweep.restart_hook is None) == (sweep.server_argv is None):
        raise ProfileError("give exactly one of a restart hook or a server argv")
    start = time.monotonic()
    rows: list[ProfileRow] = []
    server: subprocess.Popen[bytes] | None = None
    try:
        for share in sweep.shares_pct:
            env = {**os.environ, **sweep.extra_env, **share_env(share, sweep.memory_bytes)}
            remaining = sweep.deadline_s - (time.monotonic() - start)
            if remaining <= 0:
                raise ProfileError(f"sweep deadline {sweep.deadline_s:g} s reached")
            if sweep.restart_hook is not None:
                try:
                    done = subprocess.run(list(sweep.restart_hook), env=env, capture_output=True,
                                          timeout=min(remaining, sweep.ready_timeout_s),
                                          check=False)
                except (OSError, subprocess.TimeoutExpired) as e:
                    raise ProfileError(f"restart hook: {e}") from None
                if done.returncode != 0:
                    raise ProfileError(f"restart hook exited {done.returncode}: "
                                       f"{done.stderr.decode(errors='replace')[-300:]}")
            else:
                assert sweep.server_argv is not None
                _stop(server)
                try:
                    server = subprocess.Popen(list(sweep.server_argv), env=env,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
                except OSError as e:
                    raise ProfileError(f"server: {e}") from None
            wait_ready(target, min(sweep.ready_timeout_s, remaining))
            for c in sweep.concurrency:
                timings = measure(target, c, sweep.rounds)
                gaps = [g for t in timings for g in t.gaps_s]
                row = ProfileRow(
                    model=target.model, gpu=target.gpu, batch_size=c, share_pct=float(share),
                    colocated=sweep.colocated, sm_activity_others=sweep.sm_activity_others,
                    dram_activity_others=sweep.dram_activity_others,
                    ttft_ms=round(1000.0 * sum(t.ttft_s for t in timings) / len(timings), 4),
                    tpot_ms=round(1000.0 * sum(gaps) / len(gaps), 4) if gaps else 0.0,
                    prompt_tokens=target.prompt_tokens, output_tokens=target.output_tokens,
                )
                if row.tpot_ms <= 0:
                    raise ProfileError("streams carried a single token: cannot measure TPOT; "
                                       "raise --output-tokens")
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        _stop(server)
    return rows


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)
