"""Tenant hooks: drain, restart or move a tenant by running the operator's argv (no shell).

A hook runs with a *cleared* environment: a fixed ``PATH``, ``LANG``, ``GPUGUARD_TENANT``,
``GPUGUARD_ACTION``, ``GPUGUARD_ENV_FILE`` and exactly the variables the action needs (e.g.
``CUDA_VISIBLE_DEVICES=MIG-...``, ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50``). The same variables
are written to ``<state_dir>/env/<tenant>.env`` (systemd ``EnvironmentFile=`` syntax) before the
hook runs, because a service restarted by ``systemctl`` does not inherit the caller's
environment - the unit picks them up with ``EnvironmentFile=-<state_dir>/env/<tenant>.env``.

The common case - a tenant that is a systemd service - needs no hooks at all: when a tenant's
cgroup is ``<slice>/<name>.service`` and it has no hook of that kind, :func:`systemd_hooks`
derives ``systemctl <verb> --no-block <name>.service``. ``--no-block`` queues the job and
returns, so a slow stop never blocks the control loop; progress shows up in later snapshots.

Errors: a missing or non-executable program is permanent; a non-zero exit or a timeout
(the hook's whole process group is killed) is temporary.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gpuguardd.config import TenantConfig
from gpuguardd.host.protocol import LeverError

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.service$")
HOOKS = ("restart", "stop", "start")


def systemd_unit_of(cgroup: str | None) -> str | None:
    """``system.slice/llm.service`` -> ``llm.service``; None unless it is a service cgroup."""
    if not cgroup:
        return None
    leaf = cgroup.rstrip("/").rsplit("/", 1)[-1]
    return leaf if _UNIT.match(leaf) else None


def systemd_hooks(unit: str) -> dict[str, list[str]]:
    """Hook argvs for a systemd service (queued with --no-block, never waited for)."""
    if not _UNIT.match(unit):
        raise ValueError(f"{unit!r} is not a systemd service name")
    return {verb: ["systemctl", verb, "--no-block", unit] for verb in HOOKS}


@dataclass(frozen=True, slots=True)
class HookRun:
    tenant: str
    hook: str
    argv: tuple[str, ...]
    returncode: int
    output: str


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TenantHooks:
    def __init__(self, state_dir: str | Path, *, derive_systemd: bool = True) -> None:
        self.env_dir = Path(state_dir) / "env"
        self.derive_systemd = derive_systemd
        self.failures: dict[str, int] = {}
        self.runs: dict[str, int] = {}

    def argv(self, tenant: TenantConfig, hook: str) -> list[str] | None:
        explicit = {"restart": tenant.hooks.restart, "stop": tenant.hooks.stop,
                    "start": tenant.hooks.start}[hook]
        if explicit:
            return list(explicit)
        unit = systemd_unit_of(tenant.cgroup) if self.derive_systemd else None
        return systemd_hooks(unit)[hook] if unit else None

    def run(self, tenant: TenantConfig, hook: str, env: Mapping[str, str]) -> HookRun:
        if hook not in HOOKS:
            raise LeverError(f"unknown hook {hook!r}", permanent=True)
        argv = self.argv(tenant, hook)
        if argv is None:
            raise LeverError(f"tenant {tenant.name}: no {hook} hook configured and its cgroup "
                             f"is not a systemd service", permanent=True)
        for k, v in env.items():
            if not _ENV_KEY.match(k) or "\0" in v or "\n" in v:
                raise LeverError(f"tenant {tenant.name}: refusing environment {k!r}",
                                 permanent=True)
        env_file = self._write_env_file(tenant.name, env)
        full_env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", **env,
                    "GPUGUARD_TENANT": tenant.name, "GPUGUARD_ACTION": hook,
                    "GPUGUARD_ENV_FILE": str(env_file)}
        self.runs[hook] = self.runs.get(hook, 0) + 1
        try:
            proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, close_fds=True, cwd="/")
        except OSError as e:
            self._fail(hook)
            raise LeverError(f"tenant {tenant.name} {hook} hook {argv[0]}: {e.strerror or e}",
                             permanent=True) from None
        try:
            out, _ = proc.communicate(timeout=tenant.hooks.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self._fail(hook)
            raise LeverError(f"tenant {tenant.name} {hook} hook timed out after "
                             f"{tenant.hooks.timeout_s}s and was killed") from None
        result = HookRun(tenant.name, hook, tuple(argv), proc.returncode, out[-2000:])
        if proc.returncode != 0:
            self._fail(hook)
            raise LeverError(f"tenant {tenant.name} {hook} hook exited {proc.returncode}: "
                             f"{out.strip()[-300:]}", retry_after_s=60.0)
        return result

    def _fail(self, hook: str) -> None:
        self.failures[hook] = self.failures.get(hook, 0) + 1

    def _write_env_file(self, tenant: str, env: Mapping[str, str]) -> Path:
        """Atomically replace ``<state_dir>/env/<tenant>.env`` (mode 0640)."""
        self.env_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        target = self.env_dir / f"{tenant}.env"
        text = "".join(f"{k}={_quote(v)}\n" for k, v in sorted(env.items()))
        fd, tmp = tempfile.mkstemp(dir=self.env_dir, prefix=f".{tenant}.")
        try:
            os.fchmod(fd, 0o640)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return target
