"""Autoscaling: how many replicas a deployment wants for the load its gateways report.

Pure and shared: the control plane's deployment reconciler calls it on every pass, and the
benchmarks replay traces through the same code. `load` turns the gateways' reports into
one `Load` per deployment; `policy.decide` turns a `Load` and the remembered
`ScalingState` into a replica count. Neither does I/O or reads a clock.
"""

from kaon.autoscaling.load import REPORT_TTL_S, Load, LoadBoard
from kaon.autoscaling.policy import ScalingDecision, ScalingState, decide, wanted

__all__ = [
    "REPORT_TTL_S",
    "Load",
    "LoadBoard",
    "ScalingDecision",
    "ScalingState",
    "decide",
    "wanted",
]
