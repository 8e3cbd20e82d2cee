"""The simulated GPU host: topology and MIG, PCIe/NVMe/SM/HBM sharing, LLM/ETL/training tenants,
trace replay and scenarios, behind the same Host protocol as the real host."""

from gpuguardd.sim.host import SimHost
from gpuguardd.sim.scenario import BUILTIN_SCENARIOS, Scenario, ScenarioError, load_scenario

__all__ = ["BUILTIN_SCENARIOS", "Scenario", "ScenarioError", "SimHost", "load_scenario"]
