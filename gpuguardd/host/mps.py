"""``nvidia-cuda-mps-control`` over its stdin protocol.

One short-lived ``nvidia-cuda-mps-control`` process per command (argv list, no shell, cleared
environment plus ``CUDA_MPS_PIPE_DIRECTORY``, a timeout). Commands are built from validated
integers only, so nothing a tenant controls reaches the control daemon's parser.

Remember (BRIEF.md): ``set_active_thread_percentage <server pid> <pct>`` and the default variant
apply to clients created *afterwards*; a running client keeps its share. The MPS lever therefore
means "set the limit, then restart the client" (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` in the
restarted tenant's environment does the same per client).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gpuguardd.host.protocol import LeverError

DEFAULT_BINARY = "nvidia-cuda-mps-control"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MpsControl:
    def __init__(self, binary: str = DEFAULT_BINARY, pipe_dir: str | Path | None = None,
                 timeout_s: float = 5.0) -> None:
        self.binary = binary
        self.pipe_dir = str(pipe_dir) if pipe_dir is not None else None
        self.timeout_s = timeout_s

    def executable(self) -> str | None:
        if "/" in self.binary:
            return self.binary if Path(self.binary).is_file() else None
        return shutil.which(self.binary, path=SAFE_PATH)

    def available(self) -> bool:
        """True when the control program exists and a control daemon answers."""
        if self.executable() is None:
            return False
        try:
            self.server_list()
        except LeverError:
            return False
        return True

    def _run(self, command: str) -> str:
        exe = self.executable()
        if exe is None:
            raise LeverError(f"{self.binary} not found (MPS not installed)", permanent=True)
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        if self.pipe_dir is not None:
            env["CUDA_MPS_PIPE_DIRECTORY"] = self.pipe_dir
        try:
            done = subprocess.run([exe], input=command + "\n", env=env, capture_output=True,
                                  text=True, timeout=self.timeout_s, check=False,
                                  close_fds=True)
        except subprocess.TimeoutExpired:
            raise LeverError(f"MPS '{command}' timed out after {self.timeout_s}s") from None
        except OSError as e:
            raise LeverError(f"MPS control: {e}", permanent=True) from None
        out = done.stdout.strip()
        if done.returncode != 0 or _looks_like_error(out):
            detail = (done.stderr.strip() or out or f"exit {done.returncode}")[-300:]
            raise LeverError(f"MPS '{command}': {detail}", retry_after_s=60.0)
        return out

    # -- queries -------------------------------------------------------------------------------
    def server_list(self) -> list[int]:
        """PIDs of the running MPS servers (one per user/GPU set)."""
        return [int(x) for x in self._run("get_server_list").split() if x.isdigit()]

    def get_active_thread_percentage(self, server_pid: int) -> float:
        return _pct(self._run(f"get_active_thread_percentage {_pid(server_pid)}"))

    def get_default_active_thread_percentage(self) -> float:
        return _pct(self._run("get_default_active_thread_percentage"))

    # -- levers (read, compare, write, read back) -----------------------------------------------
    def set_active_thread_percentage(self, server_pid: int, pct: int) -> bool:
        """Limit clients created from now on by server ``server_pid``; False if unchanged."""
        pid = _pid(server_pid)
        if self.get_active_thread_percentage(pid) == float(_check_pct(pct)):
            return False
        self._run(f"set_active_thread_percentage {pid} {pct}")
        after = self.get_active_thread_percentage(pid)
        if after != float(pct):
            raise LeverError(f"MPS server {pid}: set {pct} %, reads back {after} %",
                             permanent=True)
        return True

    def set_default_active_thread_percentage(self, pct: int) -> bool:
        if self.get_default_active_thread_percentage() == float(_check_pct(pct)):
            return False
        self._run(f"set_default_active_thread_percentage {pct}")
        after = self.get_default_active_thread_percentage()
        if after != float(pct):
            raise LeverError(f"MPS default: set {pct} %, reads back {after} %", permanent=True)
        return True


def _looks_like_error(out: str) -> bool:
    low = out.lower()
    return low.startswith(("error", "cannot", "invalid", "unknown")) or "not found" in low


def _pid(pid: int) -> int:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise LeverError(f"bad MPS server pid {pid!r}", permanent=True)
    return pid


def _check_pct(pct: int) -> int:
    if not isinstance(pct, int) or isinstance(pct, bool) or not 1 <= pct <= 100:
        raise LeverError(f"MPS active thread percentage must be 1..100, got {pct!r}",
                         permanent=True)
    return pct


def _pct(out: str) -> float:
    try:
        return float(out.split()[-1])
    except (ValueError, IndexError):
        raise LeverError(f"MPS: unexpected answer {out[:80]!r}") from None
