"""The operator control socket that ``gpuguardd ctl`` talks to.

Protocol: JSON lines over a unix stream socket. The client sends one request line of at most
``[control].max_request_bytes`` bytes; the server answers one line and closes::

    {"cmd": "status"}
    {"cmd": "explain", "tenant": "t1", "limit": 20}
    {"cmd": "release", "key": "io:t2:8:0", "hold_s": 600, "reason": "maintenance"}
    {"cmd": "unhold", "key": "io:t2:8:0"}

    -> {"ok": true, "result": {...}}   or   {"ok": false, "error": "what is wrong"}

Who may talk: the socket is created mode 0600 (bound under a temporary name, chmod-ed, then
renamed into place, so it is never reachable with a wider mode) and every connection's peer
credentials (SO_PEERCRED) are checked: only root and the daemon's own user are served.

Threads: an accept thread and one short-lived thread per connection (at most
``MAX_CLIENTS`` at once). Nothing here touches the host or the executor: ``release`` is queued
to the engine (``OperatorQueue``), which carries it out at the start of its next tick, in its
own thread, and the client waits for that outcome. Read-only commands read what the engine
already published (the ``StatusBoard``), so no request can block or race a tick.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gpuguardd import __version__
from gpuguardd.config import Config
from gpuguardd.model.actions import Action, IoRelease, IoThrottle, MpsLimit, Outcome, Result
from gpuguardd.runtime import codec
from gpuguardd.runtime.executor import Executor
from gpuguardd.runtime.status import StatusBoard

log = structlog.get_logger("gpuguardd.control")

MAX_CLIENTS = 8
# How long a `release` waits for the engine to pick it up: a few ticks at the longest interval.
RELEASE_WAIT_S = 30.0
_TENANT_CHARS = "a-z0-9_-"


class ControlError(Exception):
    """A request that cannot be served; the message goes back to the client."""


@dataclass
class _Release:
    key: str
    hold_s: float
    reason: str
    future: Future[dict[str, Any]]


@dataclass(frozen=True)
class Hold:
    key: str
    until: float
    reason: str


def _imposes(action: Action) -> bool:
    """Actions that put something in force (and that an operator hold vetoes); releases
    always pass."""
    if isinstance(action, IoRelease):
        return False
    return not (isinstance(action, MpsLimit) and action.pct is None)


class OperatorQueue:
    """The engine side of ``release``: requests queued by the control threads, carried out
    by ``drain`` in the engine thread; holds screen the ladder's later actions.

    Hold times are on the engine's clock (virtual seconds on the simulated host)."""

    def __init__(self, default_hold_s: float = 600.0) -> None:
        self.default_hold_s = default_hold_s
        self._queue: queue.SimpleQueue[_Release] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}

    # -- control threads --------------------------------------------------------------------
    def submit(self, key: str, hold_s: float | None = None,
               reason: str = "") -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        hold = self.default_hold_s if hold_s is None else hold_s
        self._queue.put(_Release(key, hold, reason or "operator request", fut))
        return fut

    def holds(self) -> list[Hold]:
        with self._lock:
            return sorted(self._holds.values(), key=lambda h: h.key)

    def unhold(self, key: str) -> bool:
        with self._lock:
            return self._holds.pop(key, None) is not None

    # -- engine thread ----------------------------------------------------------------------
    def drain(self, executor: Executor, now: float) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                return outcomes
            if not req.future.set_running_or_notify_cancel():
                continue  # the client gave up before we got to it: do nothing
            try:
                outcome = self._release(executor, req, now)
            except ControlError as e:
                req.future.set_exception(e)
                continue
            outcomes.append(outcome)
            held_until = None
            if req.hold_s > 0 and outcome.result in (Result.REVERTED, Result.UNCHANGED,
                                                     Result.DRY_RUN):
                held_until = now + req.hold_s
                with self._lock:
                    self._holds[req.key] = Hold(req.key, held_until, req.reason)
            log.info("operator_release", key=req.key, result=outcome.result.value,
                     detail=outcome.detail, held_until=held_until, reason=req.reason)
            req.future.set_result({"key": req.key, "result": outcome.result.value,
                                   "detail": outcome.detail, "held_until": held_until,
                                   "now": now})

    @staticmethod
    def _release(executor: Executor, req: _Release, now: float) -> Outcome:
        entry = next((e for e in executor.active() if e.key == req.key), None)
        if entry is None:
            raise ControlError(f"no active action with key {req.key!r} "
                               "(see `gpuguardd ctl status`)")
        a = entry.action
        reason = f"operator: {req.reason}"
        release: Action
        if isinstance(a, IoThrottle):
            release = IoRelease(a.tenant, a.device, reason)
        elif isinstance(a, MpsLimit):
            release = MpsLimit(a.tenant, None, reason)
        else:
            raise ControlError(f"{req.key} is a {a.kind}, which is not temporary: it is not "
                               "undone by release (change the placement in the configuration)")
        (outcome,) = executor.apply([release], now)
        return outcome

    def screen(self, actions: Sequence[Action],
               now: float) -> tuple[tuple[Action, ...], list[Outcome]]:
        with self._lock:
            for key in [k for k, h in self._holds.items() if h.until <= now]:
                del self._holds[key]
            holds = dict(self._holds)
        if not holds:
            return tuple(actions), []
        admitted: list[Action] = []
        held: list[Outcome] = []
        for a in actions:
            h = holds.get(a.key)
            if h is not None and _imposes(a):
                # FAILED (temporary), not UNAVAILABLE: the ladder backs the lever off and
                # may try it again once the hold is over, or escalate meanwhile.
                held.append(Outcome(a, Result.FAILED,
                                    f"held by operator until {h.until:.0f} ({h.reason})"))
            else:
                admitted.append(a)
        return tuple(admitted), held


def _mentions(text: str, tenant: str) -> bool:
    return re.search(rf"(?<![{_TENANT_CHARS}]){re.escape(tenant)}(?![{_TENANT_CHARS}])",
                     text) is not None


def explain_from_status(status: dict[str, Any], tenant: str, limit: int) -> dict[str, Any]:
    """A tenant's state and the decisions that concern it: actions on it, and actions on its
    neighbours whose reason names it (a throttle of an ETL job *for* this tenant).
    Pure over a ``/status`` document, so that ``ctl --url`` computes the same client-side."""
    decisions = [
        d for d in status.get("decisions", [])
        if d.get("action", {}).get("tenant") == tenant
        or _mentions(str(d.get("action", {}).get("reason", "")), tenant)
    ]
    active = [
        a for a in status.get("active_actions", [])
        if a.get("action", {}).get("tenant") == tenant or _mentions(str(a.get("reason", "")),
                                                                     tenant)
    ]
    return {
        "tenant": tenant,
        "now": status.get("now"),
        "state": status.get("tenants", {}).get(tenant),
        "slo": status.get("slo", {}).get(tenant),
        "active_actions": active,
        "decisions": decisions[-limit:] if limit > 0 else decisions,
    }


class ControlApi:
    """Dispatches one decoded request. Runs in a control thread."""

    def __init__(self, board: StatusBoard, operator: OperatorQueue,
                 config: Callable[[], Config], *, release_wait_s: float = RELEASE_WAIT_S):
        self.board = board
        self.operator = operator
        self.config = config
        self.release_wait_s = release_wait_s

    def status(self) -> dict[str, Any]:
        out = self.board.status()
        out["operator_holds"] = [
            {"key": h.key, "until": h.until, "reason": h.reason} for h in self.operator.holds()
        ]
        out["daemon"] = {"version": __version__, "pid": os.getpid()}
        out["slo"] = {
            t.name: {"ttft_p99_ms": t.slo.ttft_p99_ms, "tpot_p99_ms": t.slo.tpot_p99_ms}
            for t in self.config().tenants
        }
        return out

    def handle(self, req: Any) -> Any:
        if not isinstance(req, dict):
            raise ControlError("a request is a JSON object")
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "explain":
            tenant = _string(req, "tenant")
            if self.config().tenant(tenant) is None:
                raise ControlError(f"unknown tenant {tenant!r}")
            limit = req.get("limit", 20)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ControlError("limit: expected an integer >= 0")
            return explain_from_status(self.status(), tenant, limit)
        if cmd == "release":
            return self._release(req)
        if cmd == "unhold":
            key = _string(req, "key")
            if not self.operator.unhold(key):
                raise ControlError(f"no operator hold on {key!r}")
            log.info("operator_unhold", key=key)
            return {"key": key, "unheld": True}
        raise ControlError(f"unknown cmd {cmd!r}; expected status, explain, release or unhold")

    def _release(self, req: dict[str, Any]) -> Any:
        key = _string(req, "key")
        hold_s = req.get("hold_s")
        if hold_s is not None and (isinstance(hold_s, bool) or not isinstance(hold_s, int | float)
                                   or not 0 <= hold_s <= 86_400):
            raise ControlError("hold_s: expected a number of seconds in [0, 86400]")
        reason = req.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 200:
            raise ControlError("reason: expected a string of at most 200 characters")
        fut = self.operator.submit(key, None if hold_s is None else float(hold_s), reason)
        try:
            return fut.result(timeout=self.release_wait_s)
        except FutureTimeout:
            if fut.cancel():
                raise ControlError(
                    f"the engine did not pick the request up within {self.release_wait_s:.0f} s;"
                    " nothing was changed (is the loop stuck? see gpuguard_tick_errors_total)"
                ) from None
            return fut.result(timeout=self.release_wait_s)  # it is being carried out now
        except CancelledError:
            raise ControlError("the request was cancelled") from None


def _string(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ControlError(f"{key}: expected a non-empty string")
    return value


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def read_line(conn: socket.socket, limit: int, timeout_s: float) -> bytes:
    """One request line (without the newline), at most ``limit`` bytes, within ``timeout_s``
    overall (not per recv: a client trickling a byte a second is dropped too)."""
    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ControlError(f"no complete request within {timeout_s:g} s")
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(min(4096, limit + 1 - len(buf)))
        except TimeoutError:
            raise ControlError(f"no complete request within {timeout_s:g} s") from None
        if not chunk:
            if buf:
                return bytes(buf)  # EOF ends the request as well as a newline does
            raise ControlError("empty request")
        buf += chunk
        nl = buf.find(b"\n")
        if nl >= 0:
            if nl > limit:
                raise ControlError(f"request larger than {limit} bytes")
            return bytes(buf[:nl])
        if len(buf) > limit:
            raise ControlError(f"request larger than {limit} bytes")


class ControlServer:
    """Binds at construction (so that a bad path or a running daemon fails the start early),
    serves after ``start``. ``api`` may be attached after binding (``attach``)."""

    def __init__(self, path: str, api: ControlApi | None, *, max_request_bytes: int = 4096,
                 timeout_s: float = 5.0, allowed_uids: frozenset[int] | None = None):
        self.path = Path(path)
        self.api = api
        self.max_request_bytes = max_request_bytes
        self.timeout_s = timeout_s
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset(
            {0, os.geteuid()})
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept",
                                        daemon=True)

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            st = self.path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # stale socket of a daemon that died
            else:
                raise OSError(f"{self.path} is in use by a running gpuguardd")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            # Bound under a temporary name and chmod-ed before it appears at its real path:
            # it is never connectable there with a mode wider than 0600.
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.path)
            sock.listen(MAX_CLIENTS)
        except OSError:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return sock

    def attach(self, api: ControlApi) -> None:
        self.api = api

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            if not self._slots.acquire(blocking=False):
                self._reply(conn, {"ok": False, "error": "busy: too many control clients"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-client",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                uid = peer_uid(conn)
                try:
                    line = read_line(conn, self.max_request_bytes, self.timeout_s)
                    if uid not in self.allowed_uids:
                        # the request was read all the same: closing on unread data would
                        # reset the connection before the client reads why
                        log.warning("control_refused", uid=uid)
                        raise ControlError("permission denied")
                    try:
                        req = json.loads(line)
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        raise ControlError(f"not a JSON object: {e}") from None
                    if self.api is None:
                        raise ControlError("the daemon is starting")
                    answer: dict[str, Any] = {"ok": True, "result": self.api.handle(req)}
                except ControlError as e:
                    answer = {"ok": False, "error": str(e)}
                except Exception as e:  # one bad request never takes the server down
                    log.exception("control_failed")
                    answer = {"ok": False, "error": f"internal error: {type(e).__name__}"}
                self._reply(conn, answer)
        finally:
            self._slots.release()

    def _reply(self, conn: socket.socket, answer: dict[str, Any]) -> None:
        data = json.dumps(answer, default=_jsonable).encode() + b"\n"
        with contextlib.suppress(OSError):
            conn.settimeout(self.timeout_s)
            conn.sendall(data)
            # Lingering close: unread request bytes (an oversized request) would make close()
            # reset the connection and the client would never read the answer. Discard a
            # bounded amount for a short while instead.
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            discarded = 0
            while discarded < (1 << 20) and (chunk := conn.recv(65536)):
                discarded += len(chunk)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Outcome):
        return {"action": codec.encode(value.action), "result": value.result.value,
                "detail": value.detail}
    return str(value)
