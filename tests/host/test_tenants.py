"""Tenant hooks: argv without a shell, cleared environment, env file, timeouts, systemd."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from gpuguardd.config import HooksConfig, TenantConfig
from gpuguardd.host.protocol import LeverError
from gpuguardd.host.tenants import TenantHooks, systemd_hooks, systemd_unit_of

RECORD = r"""
import json, os, sys
json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, open(sys.argv[1], "w"))
sys.exit(int(os.environ.get("EXIT", "0")))
"""

SPAWN_AND_HANG = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


def tenant(tmp_path: Path, script: str, *extra: str, timeout_s: float = 10.0,
           cgroup: str | None = None) -> TenantConfig:
    argv = [sys.executable, "-c", script, str(tmp_path / "out"), *extra]
    return TenantConfig(name="t2", cgroup=cgroup,
                        hooks=HooksConfig(restart=argv, stop=argv, timeout_s=timeout_s))


def test_restart_runs_argv_with_cleared_env_and_action_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    hooks = TenantHooks(tmp_path / "state")
    t = tenant(tmp_path, RECORD, "a b; rm -rf /")  # one argv element, never a shell
    env = {"CUDA_VISIBLE_DEVICES": "MIG-0c1b2a3d-4e5f", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}
    run = hooks.run(t, "restart", env)
    assert run.returncode == 0
    seen = json.loads((tmp_path / "out").read_text())
    assert seen["argv"] == [str(tmp_path / "out"), "a b; rm -rf /"]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "MIG-0c1b2a3d-4e5f"
    assert seen["env"]["GPUGUARD_TENANT"] == "t2" and seen["env"]["GPUGUARD_ACTION"] == "restart"
    assert "AWS_SECRET_ACCESS_KEY" not in seen["env"]
    env_file = Path(seen["env"]["GPUGUARD_ENV_FILE"])
    assert env_file == tmp_path / "state" / "env" / "t2.env"
    assert env_file.read_text() == ('CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="50"\n'
                                    'CUDA_VISIBLE_DEVICES="MIG-0c1b2a3d-4e5f"\n')
    assert oct(env_file.stat().st_mode & 0o777) == "0o640"


def test_nonzero_exit_is_temporary(tmp_path: Path) -> None:
    hooks = TenantHooks(tmp_path / "state")
    with pytest.raises(LeverError, match="exited 3") as e:
        hooks.run(tenant(tmp_path, RECORD), "restart", {"EXIT": "3"})
    assert not e.value.permanent and hooks.failures == {"restart": 1}


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    hooks = TenantHooks(tmp_path / "state")
    t0 = time.monotonic()
    with pytest.raises(LeverError, match="timed out") as e:
        hooks.run(tenant(tmp_path, SPAWN_AND_HANG, timeout_s=1.0), "stop", {})
    assert not e.value.permanent and time.monotonic() - t0 < 5
    child = int((tmp_path / "out").read_text())
    time.sleep(0.2)
    assert _dead(child)


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_missing_program_or_hook_is_permanent(tmp_path: Path) -> None:
    hooks = TenantHooks(tmp_path / "state")
    t = TenantConfig(name="t3", hooks=HooksConfig(restart=[str(tmp_path / "nope")]))
    with pytest.raises(LeverError) as e:
        hooks.run(t, "restart", {})
    assert e.value.permanent
    with pytest.raises(LeverError, match="no stop hook") as e2:
        hooks.run(t, "stop", {})
    assert e2.value.permanent


def test_bad_environment_refused(tmp_path: Path) -> None:
    hooks = TenantHooks(tmp_path / "state")
    for env in ({"lower": "x"}, {"A": "x\ny"}, {"LD_PRELOAD=": "x"}):
        with pytest.raises(LeverError):
            hooks.run(tenant(tmp_path, RECORD), "restart", env)
    assert not (tmp_path / "out").exists()


def test_systemd_unit_helper() -> None:
    assert systemd_unit_of("system.slice/llm.service") == "llm.service"
    assert systemd_unit_of("system.slice/vllm@0.service/") == "vllm@0.service"
    assert systemd_unit_of("kubepods/burstable/pod1/abc") is None
    assert systemd_unit_of(None) is None
    assert systemd_hooks("llm.service")["restart"] == [
        "systemctl", "restart", "--no-block", "llm.service"]
    with pytest.raises(ValueError):
        systemd_hooks("x; reboot")


def test_systemd_hooks_derived_from_service_cgroup(tmp_path: Path) -> None:
    t = TenantConfig(name="t1", cgroup="system.slice/etl.service")
    hooks = TenantHooks(tmp_path)
    assert hooks.argv(t, "stop") == ["systemctl", "stop", "--no-block", "etl.service"]
    assert TenantHooks(tmp_path, derive_systemd=False).argv(t, "stop") is None
    explicit = TenantConfig(name="t1", cgroup="system.slice/etl.service",
                            hooks=HooksConfig(stop=["/usr/local/bin/drain", "etl"]))
    assert hooks.argv(explicit, "stop") == ["/usr/local/bin/drain", "etl"]
