"""``gpuguardd run`` on the real backend of this GPU-less machine: one clear error, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pynvml
import pytest


def test_run_requiring_a_gpu_on_a_host_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    from gpuguardd.host.nvml import Nvml

    if Nvml().available():
        pytest.skip("this machine has NVML")
    cfg = tmp_path / "gpuguardd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[push]\nsocket = "{tmp_path / "run" / "s.sock"}"\n'
                   '[metrics]\nlisten = "127.0.0.1:0"\n')
    cfg.chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "gpuguardd", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 1
    assert "require_gpu = true" in done.stderr and "gpuguardd run --sim" in done.stderr
    assert "Traceback" not in done.stderr
