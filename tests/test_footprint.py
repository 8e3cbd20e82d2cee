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
