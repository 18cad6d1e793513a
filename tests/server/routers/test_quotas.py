"""Quota admin over real HTTP, and quotas enforced on real processes."""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from kaon.core.errors import InvalidSpecError, PermissionDeniedError
from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer

PY = sys.executable


class TestQuotaAdmin:
    def test_set_list_delete(self, server: RunningServer) -> None:
        admin = server.client()
        admin.workspaces.create("team-a")
        view = admin.quotas.set("team-a", gpus=8, cpus=4, memory="2Gi", borrow_limit=2)
        assert view.quota.gpus == 8 and view.quota.memory == 2 * 2**30
        assert [q.workspace for q in admin.quotas.list()] == ["team-a"]
        admin.quotas.delete("team-a")
        assert admin.quotas.list() == []

    def test_bad_quota_input_is_422_naming_the_field(self, server: RunningServer) -> None:
        headers = {"Authorization": f"Bearer {server.token}"}
        r = httpx.put(f"{server.url}/api/v1/quotas/default", json={"gpus": -1}, headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "gpus"
        r = httpx.put(
            f"{server.url}/api/v1/quotas/nope", json={"borrow_limit": 8}, headers=headers
        )
        assert r.status_code == 422 and r.json()["field"] == "workspace"
        assert "does not exist" in r.json()["detail"]

    def test_members_cannot_set_quotas(self, server: RunningServer) -> None:
        member = server.client(token=server.client().tokens.create("m").token)
        with pytest.raises(PermissionDeniedError):
            member.quotas.set("default", cpus=1)

    def test_job_over_quota_plus_borrow_is_refused(self, server: RunningServer) -> None:
        admin = server.client()
        admin.quotas.set("default", cpus=2, borrow_cpus=0)
        with pytest.raises(InvalidSpecError, match="quota plus borrow limit") as e:
            admin.jobs.submit([PY, "-c", "pass"], cpu=3)
        assert e.value.field == "resources"


class TestQuotaEnforced:
    def test_workspace_over_its_quota_waits_for_its_own_jobs(self, server: RunningServer) -> None:
        admin = server.client()
        admin.quotas.set("default", cpus=2, borrow_cpus=0)
        release = server.settings.home / "release"
        hold = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)"
        first = admin.jobs.submit([PY, "-c", hold], cpu=2)
        second = admin.jobs.submit([PY, "-c", "pass"], cpu=1)
        deadline = time.monotonic() + 20
        while (
            admin.jobs.get(first.id).status is not JobStatus.RUNNING
            or not admin.jobs.get(second.id).waiting_reason
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The node has 8 CPUs free, but the workspace's quota (2, no borrowing) is used up.
        assert admin.jobs.get(second.id).status is JobStatus.QUEUED
        reason = admin.jobs.get(second.id).waiting_reason or ""
        assert "quota: workspace default would use" in reason  # its name, never its id
        assert "ws-" not in reason
        release.touch()
        assert admin.jobs.wait(second.id, timeout=30).status is JobStatus.SUCCEEDED
