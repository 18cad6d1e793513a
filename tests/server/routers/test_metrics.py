"""`/metrics` over real HTTP, with the reconcilers running, on SQLite and PostgreSQL: who
may scrape it, and that each family counts what happened."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.conftest import ADMIN_TOKEN, RunningServer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JOBS_ROUTE = "/api/v1/workspaces/{workspace}/jobs"
ROOT = Path(__file__).resolve().parents[3]


def scrape(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape, by name and labels."""
    r = httpx.get(f"{server.url}/metrics", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class TestAccess:
    def test_no_token_is_401_and_a_member_is_403(self, server: RunningServer) -> None:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        made = httpx.post(
            f"{server.url}/api/v1/tokens",
            json={"name": "m", "workspaces": ["default"]},
            headers=ADMIN,
        )
        member = {"Authorization": f"Bearer {made.json()['token']}"}
        assert httpx.get(f"{server.url}/metrics", headers=member).status_code == 403

    def test_an_admin_gets_the_prometheus_text_format(self, server: RunningServer) -> None:
        r = httpx.get(f"{server.url}/metrics", headers=ADMIN)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=")
        assert "# TYPE kaon_jobs gauge" in r.text


class TestJobs:
    def test_jobs_by_state_and_their_queue_wait_observed_once(
        self, server: RunningServer, client: Client
    ) -> None:
        before = scrape(server)
        assert value(before, "kaon_jobs", workspace="default", state="succeeded") == 0
        job = client.jobs.submit([sys.executable, "-c", "print('hi')"], cpu=0.5)
        assert client.jobs.wait(job.id, timeout=30).status is JobStatus.SUCCEEDED
        after = scrape(server)
        assert value(after, "kaon_jobs", workspace="default", state="succeeded") == 1
        assert value(after, "kaon_jobs", workspace="default", state="queued") == 0
        assert value(after, "kaon_job_queue_wait_seconds_count", workspace="default") == 1
        again = scrape(server)  # a later scrape does not count the same start twice
        assert value(again, "kaon_job_queue_wait_seconds_count", workspace="default") == 1
        assert value(again, "kaon_job_preemptions_total", workspace="default") == 0


class TestApi:
    def test_requests_are_counted_by_route_template_and_status(
        self, server: RunningServer
    ) -> None:
        with httpx.Client(base_url=server.url, headers=ADMIN) as http:
            assert http.get("/api/v1/workspaces/default/jobs").status_code == 200
            assert http.get("/api/v1/workspaces/default/jobs/j-nope").status_code == 404
            assert http.get("/no/such/page").status_code == 404
        samples = scrape(server)
        ok = value(
            samples, "kaon_api_requests_total", method="GET", route=JOBS_ROUTE, status="200"
        )
        assert ok is not None and ok >= 1
        missing = value(
            samples,
            "kaon_api_requests_total",
            method="GET",
            route=JOBS_ROUTE + "/{job_id}",
            status="404",
        )
        assert missing == 1  # by template: the job id is not a label
        assert (
            value(
                samples, "kaon_api_requests_total", method="GET", route="unmatched", status="404"
            )
            == 1
        )
        timed = value(
            samples, "kaon_api_request_duration_seconds_count", method="GET", route=JOBS_ROUTE
        )
        assert timed is not None and timed >= 1


class TestReconcilers:
    @pytest.mark.parametrize("reconciler", ["jobs", "pools", "deployments"])
    def test_passes_are_timed_and_lag_is_reported(
        self, server: RunningServer, client: Client, reconciler: str
    ) -> None:
        job = client.jobs.submit([sys.executable, "-c", "pass"], cpu=0.5)
        client.jobs.wait(job.id, timeout=30)  # the jobs loop has run passes by now
        samples = scrape(server)
        passes = value(samples, "kaon_reconciler_pass_seconds_count", reconciler=reconciler)
        assert passes is not None and passes >= 1
        lag = value(samples, "kaon_reconciler_lag_seconds", reconciler=reconciler)
        assert lag is not None and lag >= 0


class TestGrafanaDashboard:
    def test_it_queries_only_metrics_the_server_exports(self, server: RunningServer) -> None:
        dashboard = json.loads((ROOT / "docs" / "grafana" / "kaon.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        used = {
            re.sub(r"_(bucket|count|sum|total)$", "", name)
            for expr in exprs
            for name in re.findall(r"\bkaon_[a-z_]+", expr)
        }
        r = httpx.get(f"{server.url}/metrics", headers=ADMIN)
        exported = {family.name for family in text_string_to_metric_families(r.text)}
        assert used and used <= exported, used - exported
