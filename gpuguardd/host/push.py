"""The latency push socket (CONTRACTS.md): a unix datagram socket, one JSON object a datagram.

    {"tenant": "t1", "ttft_s": 0.0123}
    {"tenant": "t1", "ttft_s": [0.012, 0.013], "tpot_s": 0.041}

A receiver thread parses datagrams straight into per-tenant quantile sketches (bounded memory
whatever the rate); :meth:`PushReceiver.drain` hands the engine what arrived since the last
call. Bad input is counted by reason and dropped, never raised:

* ``oversize``       datagram longer than ``max_datagram_bytes``
* ``malformed``      not UTF-8 JSON, not an object, no ``tenant`` string, no sample, wrong types
* ``bad_value``      a latency that is negative, NaN, infinite or above an hour
* ``unknown_tenant`` a tenant the configuration does not name
* ``rate_limited``   the tenant already delivered ``max_samples_per_tenant`` samples this tick

The socket is created with mode 0660 inside a directory the daemon owns (0750 when created);
a stale socket file is replaced, anything else at the path is an error.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpuguardd.model.sketch import FrozenSketch, Sketch

#: a pushed latency above this is not a measurement (and 1e307 s would overflow the sketch)
MAX_LATENCY_S = 3600.0
REASONS = ("oversize", "malformed", "bad_value", "unknown_tenant", "rate_limited")


class PushSocketError(Exception):
    """The push socket cannot be created safely (bad directory owner, non-socket at path...)."""


@dataclass(frozen=True, slots=True)
class PushWindow:
    """What one tenant pushed since the last drain; ``requests`` counts TTFT samples (cumulative
    over the receiver's life in ``requests_total``)."""

    ttft: FrozenSketch
    tpot: FrozenSketch
    requests_total: int


class _Buf:
    __slots__ = ("n", "requests_total", "tpot", "ttft")

    def __init__(self, requests_total: int = 0) -> None:
        self.ttft = Sketch()
        self.tpot = Sketch()
        self.n = 0
        self.requests_total = requests_total


def _samples(v: object) -> list[float] | None:
    """A number or a list of numbers as floats; None when the type is wrong."""
    if isinstance(v, bool):
        return None
    try:  # JSON integers are unbounded: 1e400 written out overflows float (a bad value)
        if isinstance(v, int | float):
            return [float(v)]
        if isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                       for x in v):
            return [float(x) for x in v]
    except OverflowError:
        return [math.inf]
    return None


class PushReceiver:
    def __init__(
        self,
        path: str | Path,
        tenants: Iterable[str],
        *,
        max_samples_per_tenant: int = 100_000,
        max_datagram_bytes: int = 65_536,
    ) -> None:
        self.path = Path(path)
        self.max_samples = max_samples_per_tenant
        self.max_datagram = max_datagram_bytes
        self._tenants = frozenset(tenants)
        self._lock = threading.Lock()
        self._bufs: dict[str, _Buf] = {t: _Buf() for t in self._tenants}
        self._rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._accepted = 0
        #: CPU seconds the receiver thread has used (its capacity, whatever the machine load)
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._run, name="gpuguardd-push", daemon=True)
        self._thread.start()

    # -- socket --------------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        d = self.path.parent
        if not d.exists():
            d.mkdir(mode=0o750, parents=True)
        st = d.stat()
        if st.st_uid != os.geteuid():
            raise PushSocketError(f"{d} is owned by uid {st.st_uid}, not by the daemon "
                                  f"(uid {os.geteuid()}); refusing to create {self.path.name}")
        if st.st_mode & stat.S_IWOTH:
            raise PushSocketError(f"{d} is world-writable; refusing to create the push socket")
        with contextlib.suppress(FileNotFoundError):
            existing = self.path.lstat()
            if not stat.S_ISSOCK(existing.st_mode):
                raise PushSocketError(f"{self.path} exists and is not a socket")
            self.path.unlink()  # stale socket of an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o117)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        buf = bytearray(self.max_datagram + 1)
        view = memoryview(buf)
        cpu0 = time.thread_time()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if not ready:
                continue
            count = 0
            while True:  # drain everything queued, then wait again
                try:
                    n = self._sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if self._stop.is_set():
                        return
                    break
                if n > self.max_datagram:
                    self._reject("oversize")
                else:
                    try:
                        self.feed(bytes(view[:n]))
                    except Exception:  # a decoder bug must not silence the socket for good
                        self._reject("malformed")
                count += 1
                if count % 256 == 0:
                    self.cpu_s = time.thread_time() - cpu0
            self.cpu_s = time.thread_time() - cpu0

    # -- parsing -------------------------------------------------------------------------------
    def feed(self, data: bytes) -> str | None:
        """Account one datagram; returns the rejection reason or None if accepted."""
        if len(data) > self.max_datagram:
            return self._reject("oversize")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return self._reject("malformed")
        if not isinstance(obj, dict):
            return self._reject("malformed")
        tenant = obj.get("tenant")
        if not isinstance(tenant, str):
            return self._reject("malformed")
        ttft_raw, tpot_raw = obj.get("ttft_s"), obj.get("tpot_s")
        if ttft_raw is None and tpot_raw is None:
            return self._reject("malformed")
        ttft = _samples(ttft_raw) if ttft_raw is not None else []
        tpot = _samples(tpot_raw) if tpot_raw is not None else []
        if ttft is None or tpot is None or not (ttft or tpot):
            return self._reject("malformed")
        if any(not 0 <= x <= MAX_LATENCY_S for x in (*ttft, *tpot)):  # nan fails too
            return self._reject("bad_value")
        if tenant not in self._tenants:
            return self._reject("unknown_tenant")
        n = len(ttft) + len(tpot)
        with self._lock:
            b = self._bufs.get(tenant)
            if b is None:  # removed by a reload since the check above
                self._rejected["unknown_tenant"] += 1
                return "unknown_tenant"
            if b.n + n > self.max_samples:
                self._rejected["rate_limited"] += 1
                return "rate_limited"
            b.n += n
            b.requests_total += len(ttft)
            for x in ttft:
                b.ttft.add(x)
            for x in tpot:
                b.tpot.add(x)
            self._accepted += n
        return None

    def _reject(self, reason: str) -> str:
        with self._lock:
            self._rejected[reason] += 1
        return reason

    def set_tenants(self, tenants: Iterable[str]) -> None:
        """Accept exactly ``tenants`` from now on (configuration reload)."""
        names = frozenset(tenants)
        with self._lock:
            self._bufs = {t: self._bufs.get(t) or _Buf() for t in names}
            self._tenants = names

    # -- consumer side -------------------------------------------------------------------------
    def drain(self) -> dict[str, PushWindow]:
        """Per-tenant sketches of everything accepted since the previous call."""
        with self._lock:
            old = self._bufs
            self._bufs = {t: _Buf(b.requests_total) for t, b in old.items()}
        return {t: PushWindow(b.ttft.frozen(), b.tpot.frozen(), b.requests_total)
                for t, b in old.items()}

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    @property
    def accepted_samples(self) -> int:
        with self._lock:
            return self._accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
