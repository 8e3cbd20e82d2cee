"""``gpuguardd ctl``: talk to a running daemon.

    gpuguardd ctl status                    tenants, levels, active actions (expiry, reason)
    gpuguardd ctl explain TENANT            the last decisions about a tenant and their evidence
    gpuguardd ctl release KEY [--hold S]    operator override: restore that action now
    gpuguardd ctl unhold KEY                let the ladder use that lever again

Over the control socket (``[control].socket``, root only, mode 0600); ``--url`` reads the
read-only commands from the metrics port's ``/status`` instead (no root needed).
Exit codes: 0 ok, 1 the daemon refused or cannot be reached, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gpuguardd import config
from gpuguardd.export.control import explain_from_status

DEFAULT_CONFIG = "/etc/gpuguardd/gpuguardd.toml"
MAX_ANSWER_BYTES = 64 << 20


class CtlError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def register(sub: Any) -> None:
    p = sub.add_parser("ctl", help="query or override a running daemon")
    p.add_argument("--config", help=f"read [control].socket from this file (default "
                                    f"{DEFAULT_CONFIG} when it exists)")
    p.add_argument("--socket", help="control socket path (overrides --config)")
    p.add_argument("--url", help="read-only: use http://HOST:PORT/status of the metrics port")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for the daemon")
    cmds = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    cmds.add_parser("status", help="tenants, levels, active actions, holds")
    e = cmds.add_parser("explain", help="the last decisions about TENANT and their evidence")
    e.add_argument("tenant")
    e.add_argument("--limit", type=int, default=20, help="decisions to show (default 20)")
    r = cmds.add_parser("release", help="restore the action KEY now (operator override)")
    r.add_argument("key", help="action key as shown by `status`, e.g. io:etl:259:0")
    r.add_argument("--hold", type=float, default=None, metavar="SECONDS",
                   help="the ladder may not re-apply it for this long "
                        "(default [control].default_hold_s; 0 = no hold)")
    r.add_argument("--reason", default="", help="recorded in the log and the hold")
    u = cmds.add_parser("unhold", help="lift an operator hold on KEY")
    u.add_argument("key")
    p.set_defaults(handler=handle)


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    path = args.config or DEFAULT_CONFIG
    if args.config is None and not Path(path).exists():
        return config.ControlConfig().socket
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        raise CtlError(f"{path}: " + "; ".join(e.errors), code=2) from None
    if not cfg.control.socket:
        raise CtlError(f"{path}: [control].socket is disabled (\"\"); use --url for status",
                       code=2)
    return cfg.control.socket


def request(path: str, req: dict[str, Any], timeout_s: float) -> Any:
    """One JSON line out, one JSON line back."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_s)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise CtlError(f"{path}: no such socket: is gpuguardd running? "
                           "(systemctl status gpuguardd)") from None
        except PermissionError:
            raise CtlError(f"{path}: permission denied: the control socket is root-only; "
                           "use sudo, or --url for status/explain") from None
        except ConnectionRefusedError:
            raise CtlError(f"{path}: connection refused: the daemon is not listening") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        while len(buf) <= MAX_ANSWER_BYTES:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise CtlError(f"{path}: no answer within {timeout_s:g} s") from None
    except OSError as e:
        raise CtlError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        answer = json.loads(buf)
    except json.JSONDecodeError:
        raise CtlError(f"{path}: not a gpuguardd control answer") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise CtlError(f"{path}: not a gpuguardd control answer")
    if not answer["ok"]:
        raise CtlError(str(answer.get("error", "refused")))
    return answer.get("result")


def http_status(url: str, timeout_s: float) -> Any:
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "http://" + base
    try:
        with urllib.request.urlopen(base + "/status", timeout=timeout_s) as resp:  # noqa: S310
            return json.loads(resp.read(MAX_ANSWER_BYTES))
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise CtlError(f"{base}/status: {getattr(e, 'reason', e)}") from None


def handle(args: argparse.Namespace) -> int:
    try:
        result = _call(args)
    except CtlError as e:
        print(f"gpuguardd ctl: {e}", file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(render(args.ctl_command, result), end="")
    return 0


def _call(args: argparse.Namespace) -> Any:
    cmd = args.ctl_command
    if args.url:
        if cmd not in ("status", "explain"):
            raise CtlError(f"{cmd} changes the daemon: it needs the control socket, not --url",
                           code=2)
        status = http_status(args.url, args.timeout)
        if cmd == "status":
            return status
        if args.tenant not in status.get("slo", status.get("tenants", {})):
            raise CtlError(f"unknown tenant {args.tenant!r}")
        return explain_from_status(status, args.tenant, args.limit)
    path = socket_path(args)
    if cmd == "status":
        return request(path, {"cmd": "status"}, args.timeout)
    if cmd == "explain":
        return request(path, {"cmd": "explain", "tenant": args.tenant, "limit": args.limit},
                       args.timeout)
    if cmd == "release":
        req: dict[str, Any] = {"cmd": "release", "key": args.key, "reason": args.reason}
        if args.hold is not None:
            if not 0 <= args.hold <= 86_400:
                raise CtlError("--hold: expected seconds in [0, 86400]", code=2)
            req["hold_s"] = args.hold
        return request(path, req, args.timeout)
    return request(path, {"cmd": "unhold", "key": args.key}, args.timeout)


# -- rendering ----------------------------------------------------------------------------------
def _ms(x: Any) -> str:
    return "-" if x is None else f"{float(x) * 1e3:.1f}ms"


def _q99(q: Any) -> Any:
    return q.get("p99") if isinstance(q, dict) else None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
        for r in rows
    )


def _expires(expires_at: Any, now: Any) -> str:
    if expires_at is None:
        return "never"
    if now is None:
        return f"at {float(expires_at):.0f}"
    return f"in {float(expires_at) - float(now):.0f}s"


def _render_status(st: dict[str, Any]) -> str:
    out = []
    d = st.get("daemon") or {}
    now = st.get("now")
    clock = "no tick yet" if now is None else f"clock {float(now):.1f}"
    out.append(f"gpuguardd {d.get('version', '?')} pid {d.get('pid', '?')}, {clock}\n")
    slo = st.get("slo") or {}
    rows = [["TENANT", "LEVEL", "TTFT p99", "SLO", "TPOT p99", "SLO", "WINDOW", "VIOLATING"]]
    for name in sorted(set(st.get("tenants") or {}) | set(slo)):
        t = (st.get("tenants") or {}).get(name) or {}
        s = slo.get(name) or {}
        rows.append([
            name, str(t.get("level", "-")),
            _ms(_q99(t.get("ttft"))), _slo(s.get("ttft_p99_ms")),
            _ms(_q99(t.get("tpot"))), _slo(s.get("tpot_p99_ms")),
            _flag(t.get("window_ok"), "ok", "unknown"),
            _flag(t.get("violating"), "yes", "no"),
        ])
    out.append("\n" + _table(rows))
    actions = st.get("active_actions") or []
    out.append(f"\nACTIVE ACTIONS ({len(actions)})\n")
    if actions:
        rows = [["KEY", "KIND", "STATUS", "EXPIRES", "REASON"]]
        rows += [[a["key"], str(a.get("action", {}).get("kind", "")), str(a.get("status", "")),
                  _expires(a.get("expires_at"), now), str(a.get("reason", ""))]
                 for a in actions]
        out.append(_table(rows))
    holds = st.get("operator_holds") or []
    if holds:
        out.append(f"\nOPERATOR HOLDS ({len(holds)})\n")
        out.append(_table([["KEY", "UNTIL", "REASON"]] + [
            [h["key"], _expires(h.get("until"), now), str(h.get("reason", ""))] for h in holds]))
    unavailable = st.get("unavailable_levers") or {}
    if unavailable:
        out.append(f"\nUNAVAILABLE LEVERS ({len(unavailable)})\n")
        out.append(_table([["LEVER", "ERROR"]] + [[k, str(v)] for k, v in
                                                  sorted(unavailable.items())]))
    return "".join(out)


def _flag(value: Any, yes: str, no: str) -> str:
    return "-" if value is None else (yes if value else no)


def _slo(ms: Any) -> str:
    return "-" if ms is None else f"{float(ms):g}ms"


def _render_decision(d: dict[str, Any], now: Any) -> str:
    a = d.get("action") or {}
    at = d.get("at")
    when = "" if at is None else (f"t={float(at):.1f}" if now is None
                                  else f"{float(now) - float(at):.0f}s ago")
    target = a.get("tenant", a.get("gpu", ""))
    line = f"  {when:>10}  {a.get('kind', '?')} {target} -> {d.get('result', '?')}"
    if d.get("detail"):
        line += f" ({d['detail']})"
    if a.get("reason"):
        line += f"\n              because: {a['reason']}"
    return line + "\n"


def _render_explain(ex: dict[str, Any]) -> str:
    now = ex.get("now")
    st = ex.get("state") or {}
    slo = ex.get("slo") or {}
    out = [f"tenant {ex.get('tenant')}: level {st.get('level', '-')}, "
           f"ttft p99 {_ms(_q99(st.get('ttft')))} (SLO {_slo(slo.get('ttft_p99_ms'))}), "
           f"tpot p99 {_ms(_q99(st.get('tpot')))} (SLO {_slo(slo.get('tpot_p99_ms'))}), "
           f"violation windows {st.get('violation_windows_total', '-')}\n"]
    if st.get("last_reason"):
        out.append(f"last reason: {st['last_reason']}\n")
    actions = ex.get("active_actions") or []
    out.append(f"\nin force for or on it ({len(actions)}):\n")
    for a in actions:
        out.append(f"  {a['key']} expires {_expires(a.get('expires_at'), now)}: "
                   f"{a.get('reason', '')}\n")
    decisions = ex.get("decisions") or []
    out.append(f"\nlast decisions ({len(decisions)}):\n")
    out.extend(_render_decision(d, now) for d in decisions)
    return "".join(out)


def render(cmd: str, result: Any) -> str:
    if cmd == "status":
        return _render_status(result)
    if cmd == "explain":
        return _render_explain(result)
    if cmd == "release":
        held = result.get("held_until")
        hold = "" if held is None else (
            f"; the ladder may not re-apply it for {float(held) - float(result['now']):.0f}s")
        return f"{result['key']}: {result['result']} ({result.get('detail', '')}){hold}\n"
    return f"{result['key']}: hold lifted\n"
