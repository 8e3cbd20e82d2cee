"""The daemon's footprint: the real-host path must not load the heavy numeric stacks that only
the offline commands (allocate, fit, evaluate, simulate) need."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_daemon_path_does_not_import_scipy_numpy_or_matplotlib():
    code = (
        "import sys, gpuguardd.cli, gpuguardd.app.daemon, gpuguardd.host.real\n"
        "from gpuguardd.runtime.engine import ladder_policy; ladder_policy()\n"
        "from gpuguardd.runtime.engine import policy_for; from gpuguardd.config import Config\n"
        "policy_for(Config())  # [vgpu] disabled: the numeric stack stays out\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'scipy', 'numpy', 'matplotlib'}\n"
        "print(','.join(sorted(heavy)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    assert r.stdout.strip() == "", f"the daemon path loads {r.stdout.strip()}"


# Three HAMi LLM servers on one A100-80GB PCIe (tests/vgpu/data/hami-three.toml as a daemon
# config): built-in predictors, a 30 s demand window, no cooldown in the way of the first plan.
VGPU_CONFIG = """
[vgpu]
enabled = true
demand_window_s = 30
cooldown_s = 60
[[tenant]]
name = "chat"
slo = { ttft_p99_ms = 400.0, tpot_p99_ms = 60.0 }
[tenant.vgpu]
model = "Qwen3-1.7B"
prompt_tokens = 512
output_tokens = 64
[[tenant]]
name = "code"
slo = { ttft_p99_ms = 400.0, tpot_p99_ms = 60.0 }
[tenant.vgpu]
model = "Qwen3-0.6B"
prompt_tokens = 512
output_tokens = 64
[[tenant]]
name = "rag"
slo = { ttft_p99_ms = 400.0, tpot_p99_ms = 60.0 }
[tenant.vgpu]
model = "Qwen3-1.7B"
prompt_tokens = 1024
output_tokens = 64
"""


def test_vgpu_enabled_daemon_path_does_not_import_scipy_or_numpy():
    """With ``[vgpu] enabled`` and the built-in predictors, the policy the daemon builds plans
    shares (snapshots as the real host delivers them, no simulator) without numpy or scipy."""
    code = (
        "import sys, gpuguardd.cli, gpuguardd.app.daemon, gpuguardd.host.real\n"
        "from gpuguardd import config as cfgmod\n"
        "from gpuguardd.runtime.engine import policy_for\n"
        "from gpuguardd.model.sketch import FrozenSketch\n"
        "from gpuguardd.model.snapshot import (GpuSample, LatencyWindow, Placement, Snapshot,\n"
        "    TenantClass, TenantSample)\n"
        "from gpuguardd.model.topology import GpuInfo, Topology\n"
        f"cfg = cfgmod.loads({VGPU_CONFIG!r})\n"
        "pol = policy_for(cfg)\n"
        "state = pol.initial(cfg)\n"
        "topo = Topology((GpuInfo(0, 'GPU-0', 'A100-PCIE-80GB', '0000:17:00.0', 0, None,\n"
        "                         'root0', 4, 16, 80 << 30, 108),))\n"
        "rps = {'chat': 1.5, 'code': 2.0, 'rag': 1.0}\n"
        "shares = []\n"
        "for i in range(40):\n"
        "    now = 2.0 * i\n"
        "    tenants = {n: TenantSample(n, TenantClass.LATENCY, True, Placement(0),\n"
        "                               LatencyWindow(ttft=FrozenSketch((), round(2 * r), 0.0)),\n"
        "                               restartable=True, share_pct=33)\n"
        "               for n, r in rps.items()}\n"
        "    snap = Snapshot(now, topo, gpus=(GpuSample(0, sm_util=0.5),), tenants=tenants)\n"
        "    state, d = pol.decide(state, snap, cfg)\n"
        "    shares += [a.compute_pct for a in d.actions if a.kind == 'vgpu_set']\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'scipy', 'numpy', 'matplotlib'}\n"
        "print(','.join(sorted(heavy)) + ';' + ','.join(map(str, shares)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    heavy, _, shares = r.stdout.strip().partition(";")
    print("shares proposed:", shares)
    assert shares, "the planner proposed no share (the test would prove nothing)"
    assert heavy == "", f"the vGPU daemon path loads {heavy}"
