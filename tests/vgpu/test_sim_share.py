"""The simulator's HAMi share bounds a tenant's HBM time as well as its SM time."""

from __future__ import annotations

from gpuguardd.model.sketch import Sketch
from gpuguardd.sim.scenario import loads

ONE = """
[scenario]
name = "one"
seconds = 60
seed = 2
[host]
preset = "a100-pcie"
[[tenant]]
name = "llm"
kind = "inference"
class = "latency"
gpu = 0
model = "Qwen3-4B"
slo = {{ tpot_p99_ms = 100.0 }}
arrivals = {{ rate_rps = 1 }}
prompt_tokens = 128
output_tokens = 128
{share}
"""


def _tpot_p50_ms(share: str) -> float:
    host = loads(ONE.format(share=share), seconds=60).build_host()
    sk = Sketch()
    for t in range(2, 62, 2):
        sk.merge(host.observe(float(t)).tenants["llm"].latency.tpot)
    q = sk.quantile(0.5)
    assert q is not None
    return q * 1e3


def test_a_share_stretches_decode_alone_on_the_gpu() -> None:
    """Decode is HBM-bound: with 25 % of the time slices it streams at most 25 % of the time,
    so its step time grows about fourfold (a little less: host time per step is not sliced)."""
    full, quarter = _tpot_p50_ms(""), _tpot_p50_ms("share_pct = 25")
    assert 3.0 < quarter / full < 4.2, (full, quarter)
