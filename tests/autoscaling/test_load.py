"""The load model: gateways' reports summed per deployment, stale ones dropped."""

from __future__ import annotations

from kaon.autoscaling import REPORT_TTL_S, Load, LoadBoard
from kaon.core.gateway import DeploymentLoad, GatewayReport


def report(gateway: str, *loads: DeploymentLoad) -> GatewayReport:
    return GatewayReport(gateway_id=gateway, time=0.0, window_s=1.0, deployments=list(loads))


def load(
    name: str, in_flight: int = 0, queued: int = 0, rps: float = 0.0, **kw: bool
) -> DeploymentLoad:
    return DeploymentLoad(name=name, in_flight=in_flight, queued=queued, requests_per_s=rps, **kw)


class TestLoadBoard:
    def test_sums_the_newest_report_of_each_gateway(self) -> None:
        board = LoadBoard()
        board.record(report("g1", load("a", 5, 5, 9.0)), now=0)
        board.record(report("g1", load("a", 2, 1, 3.5)), now=1)  # replaces g1's first
        board.record(report("g2", load("a", 1, 0, 1.5), load("b", 7)), now=1)
        assert board.load("a", now=1) == Load(in_flight=3, queued=1, requests_per_s=5.0)
        assert board.load("b", now=1) == Load(in_flight=7)
        assert board.load("c", now=1) == Load()

    def test_a_gateway_that_stopped_reporting_stops_counting(self) -> None:
        board = LoadBoard()
        board.record(report("g1", load("a", 4)), now=0)
        board.record(report("g2", load("a", 1)), now=REPORT_TTL_S)
        assert board.load("a", now=REPORT_TTL_S - 0.1) == Load(in_flight=5)
        assert board.load("a", now=REPORT_TTL_S + 0.1) == Load(in_flight=1)

    def test_a_request_held_for_a_first_replica_is_demand(self) -> None:
        board = LoadBoard()
        board.record(report("g1", load("a", waiting_for_replica=True)), now=0)
        assert board.load("a", now=0) == Load(queued=1)
        assert board.load("a", now=0).busy

    def test_forget_and_pruning(self) -> None:
        board = LoadBoard()
        board.record(report("old-gateway", load("a", 1)), now=0)
        board.record(report("g", load("b", 1)), now=0)
        board.forget("b")
        assert board.load("b", now=0) == Load()
        board.record(report("g", load("a", 2)), now=100 * REPORT_TTL_S)
        assert len(board._latest) == 1  # the long-gone gateway's entry is pruned
