"""Fixtures shared by the reliability tests: the host tests' fake sysfs/procfs/cgroupfs tree
of RealHost, a machine without NVML, and a RealHost over that tree."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpuguardd.host.paths import HostPaths
from gpuguardd.host.real import RealHost
from tests.host import test_real

tree = test_real.tree


def _no_lib(name: str) -> object:
    raise OSError(name)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML's shared library cannot be loaded (a host without NVIDIA driver)."""
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "CDLL", _no_lib)


def real_host(tmp_path: Path, tree: Path, **t2_changes: Any) -> RealHost:
    """A GPU-less RealHost over the fake tree, tenant t2 changed by ``t2_changes``."""
    cfg = test_real.config(tmp_path, require_gpu=False)
    t2 = dataclasses.replace(cfg.tenants[1], **t2_changes)
    cfg = dataclasses.replace(cfg, tenants=(cfg.tenants[0], t2, *cfg.tenants[2:]))
    return RealHost(cfg, HostPaths(tree, tree / "cgroup"), monitor=False)
