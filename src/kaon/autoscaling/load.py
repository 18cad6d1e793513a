"""The load model: what every gateway last saw of a deployment, summed.

Each gateway reports every second (`kaon.core.gateway.GatewayReport`). A deployment's load
is the sum over gateways of their newest report, counting only reports younger than
`REPORT_TTL_S`, so a gateway that stopped reporting (it died, or was moved) stops counting
within seconds instead of pinning the deployment's size forever.

A request held because no replica is ready counts as one queued request even when the
gateway's queue is otherwise empty: it is the demand that must bring a first replica up.

The board lives in the control plane's memory. It is a snapshot that the next report
replaces, so a restart loses nothing that a second of reports does not restore (what the
policy does meanwhile: `kaon.autoscaling.policy.ScalingState.initial`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaon.core.gateway import DeploymentLoad, GatewayReport

REPORT_TTL_S = 5.0


@dataclass(frozen=True)
class Load:
    """What the gateways saw of one deployment, summed over gateways."""

    in_flight: int = 0
    queued: int = 0
    requests_per_s: float = 0.0

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queued > 0 or self.requests_per_s > 0

    def __add__(self, other: Load) -> Load:
        return Load(
            self.in_flight + other.in_flight,
            self.queued + other.queued,
            self.requests_per_s + other.requests_per_s,
        )

    @staticmethod
    def of(report: DeploymentLoad) -> Load:
        """One gateway's view of one deployment."""
        held = 1 if report.waiting_for_replica and report.queued == 0 else 0
        return Load(report.in_flight, report.queued + held, report.requests_per_s)


class LoadBoard:
    """The newest load each gateway reported for each deployment, with when it came.

    Time is passed in (`now`, unix seconds), never read, so tests and trace replays drive
    the board with their own clocks.
    """

    def __init__(self, ttl_s: float = REPORT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._latest: dict[tuple[str, str], tuple[float, Load]] = {}

    def record(self, report: GatewayReport, now: float) -> None:
        for d in report.deployments:
            self._latest[(report.gateway_id, d.key)] = (now, Load.of(d))
        # Gateways get a new id on every start: forget the reports of ones long gone.
        for key in [k for k, (at, _) in self._latest.items() if now - at > 10 * self.ttl_s]:
            del self._latest[key]

    def load(self, deployment: str, now: float) -> Load:
        """The deployment's load summed over gateways that reported within the TTL.
        `deployment` is its key, ``{workspace}/{name}`` (`kaon.core.gateway.deployment_key`):
        names are unique within a workspace only."""
        total = Load()
        for (_, name), (at, load) in self._latest.items():
            if name == deployment and now - at < self.ttl_s:
                total += load
        return total

    def forget(self, deployment: str) -> None:
        """Drop a deleted deployment's reports."""
        for key in [k for k in self._latest if k[1] == deployment]:
            del self._latest[key]
