"""The gateway's per-deployment window: what each report to the control plane says."""

from __future__ import annotations

import pytest

from kaon.core.gateway import Route
from kaon.gateway.routing import DeploymentState
from kaon.gateway.stats import GatewayMetrics


def test_a_window_counts_5xx_answers_as_errors_and_resets_with_the_report() -> None:
    metrics = GatewayMetrics()
    state = DeploymentState(Route(name="web", replicas=[], token_hashes=[]))
    metrics.attach(state)
    for status in (200, 201, 404, 500, 503):
        metrics.arrived("web")
        metrics.answered("web", status, 0.01)
    (load,) = metrics.loads([state], reset=True)
    assert load.errors_per_s > 0
    # Two errors in five answers, over the same window as the arrivals.
    assert load.errors_per_s / load.requests_per_s == pytest.approx(2 / 5)
    (after,) = metrics.loads([state], reset=False)
    assert after.errors_per_s == 0 and after.requests_per_s == 0
