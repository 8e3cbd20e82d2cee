"""The interference controller's pure decision core.

``decide(state, snapshot, config) -> (state, Decision)`` runs one pass of the escalation ladder
(detection, diagnosis, io.max -> MPS -> placement -> MIG resize, trial and revert,
de-escalation); ``absorb(state, outcomes, now)`` feeds back what the executor did. No I/O, no
clock, no logging: everything here is a function of its arguments.
"""

from gpuguardd.policy.ladder import Decision, absorb, decide
from gpuguardd.policy.state import LadderState, TenantStatus
from gpuguardd.policy.window import Quantiles

__all__ = ["Decision", "LadderState", "Quantiles", "TenantStatus", "absorb", "decide"]
