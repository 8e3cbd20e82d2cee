"""The simulated GPU host, behind the same Host protocol as the real one.

Usage (what the evaluation layer does)::

    scenario = load_scenario("noisy-neighbor", seed=1, seconds=600)
    configs = scenario.tenant_configs()     # what an operator's config would say
    host = scenario.build_host()            # a Host: observe(now), levers
    ...                                     # the engine ticks against it
    host.results(); host.timeline()         # ground truth, for evaluation only

How interference is made (no coefficient is painted on; every effect is a byte or FLOP flow):

- ``fabric``: every shared resource is processor sharing with weights and caps, max-min fair
  (b_i = min(cap_i, w_i·B/Σw_j), unused capacity redistributed). PCIe flows cross their GPU's
  link and every switch uplink above it (one fluid domain per top-level switch); NVMe devices
  are single-link domains. Flow weights are DMA copies in flight (``streams``).
- ``workloads``: an LLM server (FIFO queue, continuous batching; a prefix hit with
  ``kv_offload`` loads ``cached_tokens x kv_bytes_per_token`` over PCIe before the prefill of
  the new tokens; decode is HBM-bound and admission is bounded by KV memory), an ETL job (reads
  NVMe at min(read_bps, io.max, disk share) and copies chunks to its GPU; it cannot outrun its
  disk), a training job (compute steps at its SM share, a batch loaded over PCIe per step).
  SMs of one pool (a whole GPU or one MIG instance) and its HBM bandwidth are shared max-min
  too, capped by MPS active-thread % and HAMi share %; a MIG instance owns its SMs and
  memory_slices/8 of the HBM bandwidth. Host-side delay grows with block I/O on the tenant's
  NUMA node.
- ``calibration``: effective FLOP/s and HBM bytes/s per GPU derived from splitwise's measured
  llama2-70b timings (``data/calibration.toml``, documented per built-in model).
- ``hardware``/``topology``: A100-40/80GB, A100-PCIE-80GB and H100-SXM5-80GB with their MIG
  profiles and placements; presets ``p4d``, ``p4d-x2``, ``a100-pcie``, ``h100`` and a loader for
  NCCL topology XML.
- Costs: io.max applies at once; MPS % and vGPU compute share only through a restart
  (``restart_s``, default 20 s of downtime during which requests queue); MIG create/destroy
  fail with in-use errors and make the GPU busy for ``reconfig_s`` (default 18 s).

What the controller sees (``SimHost.observe``) is what NVML, sysfs, cgroupfs and the serving
engine show: per-GPU utilisation (not in MIG mode on A100), cumulative PCIe bytes, GPM samples
per MIG instance on Hopper only, per-cgroup block-I/O counters, per-tenant latency windows,
IRQ counts - with measurement noise from a seeded generator. Same seed, same results.
"""

from gpuguardd.sim.host import SimHost
from gpuguardd.sim.scenario import BUILTIN_SCENARIOS, Scenario, ScenarioError, load_scenario

__all__ = ["BUILTIN_SCENARIOS", "Scenario", "ScenarioError", "SimHost", "load_scenario"]
