"""Bad input over real HTTP: every malformed request is refused with the right status and
names what is wrong, none of them leaves a job behind, and the server keeps working.

The requests are sent raw with httpx, not through the SDK, so bodies the SDK would never
build (malformed JSON, unknown fields, oversized bodies) reach the server as they are.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import sys
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kaon.core.jobs import JobStatus
from kaon.server.config import normalize_database_url
from tests.conftest import (
    ADMIN_TOKEN,
    PG_ENV,
    RunningServer,
    ThreadServer,
    _pg_admin_url,
    _pg_database,
    _pg_exec,
)
from tests.conftest import (
    test_settings as make_settings,
)

PY = sys.executable
UPLOAD_LIMIT = 1024
JSON_LIMIT = 8 * 2**20
JOBS = "/api/v1/workspaces/default/jobs"
SNAPSHOTS = "/api/v1/workspaces/default/snapshots"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Api:
    """A running server, and raw HTTP to it."""

    def __init__(self, running: RunningServer) -> None:
        self.running = running
        self.url = running.url

    def http(self, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH if headers is None else headers)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One server per database for the whole module, with a 1 KiB upload limit.

    Starting a server (and a PostgreSQL database) costs about a second; the requests here
    are refused before they change anything, so they can share one. The test that proves
    nothing was written sends every bad request itself, so test order does not matter.
    """
    tmp = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    name = None
    if request.param == "sqlite":
        url = normalize_database_url(str(tmp / "kaon.db"))
    else:
        admin = _pg_admin_url()
        if admin is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{PG_ENV} must be set in CI")
            pytest.skip(f"set {PG_ENV} to run against PostgreSQL")
        name = f"kaon_test_{secrets.token_hex(6)}"
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
        url = normalize_database_url(_pg_database(admin, name))
    try:
        # This module sends hundreds of bad tokens from one address on purpose: the limit on
        # failed authentications (tests/security/test_auth_rate_limit.py) would answer 429.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("KAON_AUTH_FAILURE_LIMIT", "1000000")  # read as the app is made
            server = ThreadServer(make_settings(tmp / "home", url, upload_limit=UPLOAD_LIMIT))
        with server as running:
            yield Api(running)
    finally:
        if name is not None:
            admin = _pg_admin_url()
            assert admin is not None
            asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def tar_gz(files: dict[str, bytes] | None = None) -> bytes:
    """A working-directory snapshot as the SDK packs one (a small one by default)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (files or {"train.py": b"print('hi')\n"}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _spec(**fields: Any) -> dict[str, Any]:
    return {"command": [PY, "-c", "pass"], "resources": {"cpu": 0.5}, **fields}


def _res(**resources: Any) -> dict[str, Any]:
    return _spec(resources={"cpu": 0.5, **resources})


# (case id, job spec, the field the 422 must name)
BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("zero-cpu", _res(cpu=0), "resources.cpu"),
    ("negative-cpu", _res(cpu=-1), "resources.cpu"),
    ("zero-memory", _res(memory=0), "resources.memory"),
    ("negative-memory", _res(memory=-1), "resources.memory"),
    ("memory-lots", _res(memory="lots"), "resources.memory"),
    ("negative-gpus", _res(gpus=-1), "resources.gpus"),
    ("unknown-top-level-field", _spec(gpu=1), "gpu"),
    ("unknown-resources-field", _res(vram="80Gi"), "resources.vram"),
    ("no-command", {"resources": {"cpu": 0.5}}, "command"),
    ("empty-command", _spec(command=[]), "command"),
    ("command-of-empty-string", _spec(command=[""]), "command"),
    ("command-not-a-list", _spec(command=42), "command"),
    ("zero-workers", _spec(workers=0), "workers"),
    ("negative-retries", _spec(max_retries=-1), "max_retries"),
    ("zero-timeout", _spec(timeout_s=0), "timeout_s"),
    ("bad-name", _spec(name="Not A Name"), "name"),
    ("env-rank", _spec(env={"RANK": "3"}), "env"),
    ("env-kaon-prefix", _spec(env={"KAON_X": "1"}), "env"),
    ("env-cuda", _spec(env={"CUDA_VISIBLE_DEVICES": "0"}), "env"),
    ("env-bad-name", _spec(env={"1X": "1"}), "env"),
    ("snapshot-not-a-hash", _spec(snapshot="latest"), "snapshot"),
    ("snapshot-never-uploaded", _spec(snapshot="ab" * 32), "snapshot"),
    # The test node has 8 CPUs, 16 GiB and no GPUs: these can never run.
    ("more-gpus-than-any-node", _res(gpus=1), "resources.gpus"),
    ("more-cpu-than-any-node", _res(cpu=9), "resources.cpu"),
    ("more-memory-than-any-node", _res(memory="17Gi"), "resources.memory"),
    ("gang-never-fits", _spec(workers=5, resources={"cpu": 4}), "workers"),
]

# (case id, raw body, the field the 422 must name)
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed-json", b'{"command": ["python", ', "body"),
    ("not-json", b"command: [python]", "body"),
    ("json-list", b'["python", "-c", "pass"]', "body"),
    ("empty-body", b"", "body"),
]


def _assert_names_field(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "InvalidSpecError"
    assert body["detail"]
    named = {body.get("field")} | {e["field"] for e in body.get("errors", [])}
    assert field in named, f"{field!r} not named in {body}"


def _send_every_bad_request(api: Api) -> None:
    with api.http() as http:
        for _, spec, field in BAD_SPECS:
            _assert_names_field(http.post(JOBS, json=spec), field)
        for _, raw, field in BAD_BODIES:
            response = http.post(JOBS, content=raw, headers={"Content-Type": "application/json"})
            _assert_names_field(response, field)
        assert http.post(JOBS, content=_oversized_json()).status_code == 413
    with api.http(headers={"Authorization": "Bearer kaon_wrong"}) as http:
        assert http.post(JOBS, json=_spec()).status_code == 401


def _oversized_json() -> bytes:
    return b'{"command": ["true"], "name": "' + b"a" * (JSON_LIMIT + 1) + b'"}'


class TestInvalidJobSpecs:
    @pytest.mark.parametrize(
        ("spec", "field"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
    )
    def test_is_422_naming_the_field(self, api: Api, spec: dict[str, Any], field: str) -> None:
        with api.http() as http:
            _assert_names_field(http.post(JOBS, json=spec), field)

    @pytest.mark.parametrize(
        ("raw", "field"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
    )
    def test_unparseable_body_is_422_naming_the_body(
        self, api: Api, raw: bytes, field: str
    ) -> None:
        with api.http() as http:
            response = http.post(JOBS, content=raw, headers={"Content-Type": "application/json"})
        _assert_names_field(response, field)

    def test_every_error_is_listed(self, api: Api) -> None:
        with api.http() as http:
            response = http.post(JOBS, json=_res(cpu=-1, gpus=-1))
        fields = {e["field"] for e in response.json()["errors"]}
        assert fields == {"resources.cpu", "resources.gpus"}

    def test_snapshot_of_another_workspace_is_not_usable(self, api: Api) -> None:
        with api.http() as http:
            assert http.post("/api/v1/workspaces", json={"name": "other-ws"}).status_code in (
                201,
                409,
            )
            upload = http.post("/api/v1/workspaces/other-ws/snapshots", content=tar_gz())
            assert upload.status_code == 201
            sha = upload.json()["sha256"]
            assert http.head(f"/api/v1/workspaces/other-ws/snapshots/{sha}").status_code == 200
            _assert_names_field(http.post(JOBS, json=_spec(snapshot=sha)), "snapshot")


class TestBodyLimits:
    def test_upload_over_the_limit_is_413(self, api: Api) -> None:
        with api.http() as http:
            response = http.post(SNAPSHOTS, content=b"x" * (UPLOAD_LIMIT + 1))
            assert response.status_code == 413
            assert response.json()["error"] == "PayloadTooLargeError"
            assert "upload limit" in response.json()["detail"]
            assert http.post(SNAPSHOTS, content=tar_gz()).status_code == 201

    def test_streamed_upload_over_the_limit_is_413(self, api: Api) -> None:
        chunks = (b"z" * 512 for _ in range(8))  # no Content-Length: chunked
        with api.http() as http:
            assert http.post(SNAPSHOTS, content=chunks).status_code == 413

    def test_empty_upload_is_422(self, api: Api) -> None:
        with api.http() as http:
            _assert_names_field(http.post(SNAPSHOTS, content=b""), "body")

    def test_json_body_over_8_mib_is_413(self, api: Api) -> None:
        with api.http() as http:
            response = http.post(
                JOBS, content=_oversized_json(), headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLargeError"

    def test_streamed_json_body_over_8_mib_is_413(self, api: Api) -> None:
        data = _oversized_json()
        chunks = (data[i : i + 2**20] for i in range(0, len(data), 2**20))  # chunked
        with api.http() as http:
            response = http.post(
                JOBS, content=chunks, headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "PayloadTooLargeError"


# Path parameters and bodies that would be accepted, so only the token can be the problem.
PATH_VALUES = {
    "workspace": "default",
    "job_id": "j-000000000000",
    "ref": "nobody",
    "sha256": "ab" * 32,
    "name": "nothing-here",
    "path": "step-1/model.pt",
    "version": "1",
    "alias": "production",
}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/tokens"): {"json": {"name": "sneaky"}},
    ("POST", "/api/v1/workspaces"): {"json": {"name": "sneaky"}},
    ("POST", "/api/v1/workspaces/{workspace}/jobs"): {"json": _spec()},
    ("POST", "/api/v1/jobs/{job_id}/metrics"): {"json": {"points": [{"values": {"loss": 1.0}}]}},
    ("POST", "/api/v1/workspaces/{workspace}/snapshots"): {"content": b"x" * 10},
}


def _api_calls(url: str) -> list[tuple[str, str, str]]:
    """(method, path template, concrete path) for every route under /api, from the
    server's own OpenAPI document, so a route added later is checked too."""
    document = httpx.get(f"{url}/openapi.json").json()
    calls = []
    for template, operations in document["paths"].items():
        if not template.startswith("/api/"):
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)
        for method in operations:
            calls.append((method.upper(), template, path))
    return calls


class TestAuthentication:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer kaon_not-a-real-token"}],
        ids=["missing", "unknown"],
    )
    def test_every_api_route_is_401_without_a_valid_token(
        self, api: Api, headers: dict[str, str]
    ) -> None:
        calls = _api_calls(api.url)
        templates = {(m, t) for m, t, _ in calls}
        # The route table really is the API (and a new route with a body gets one here).
        assert ("GET", "/api/v1/workspaces/{workspace}/jobs") in templates
        assert ("POST", "/api/v1/jobs/{job_id}/metrics") in templates
        assert len(calls) >= 14
        wrong = []
        with api.http(headers=headers) as http:
            for method, template, path in calls:
                response = http.request(method, path, **BODIES.get((method, template), {}))
                if response.status_code != 401:
                    wrong.append(f"{method} {template}: {response.status_code} {response.text}")
                elif method != "HEAD":
                    assert response.json()["error"] == "AuthError"
                    assert response.headers["WWW-Authenticate"] == "Bearer"
        assert not wrong, "\n".join(wrong)

    @pytest.mark.parametrize(
        "authorization",
        ["Bearer", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN}x",
         f"Bearer {ADMIN_TOKEN[:-1]}"],
        ids=["empty", "wrong-scheme", "no-scheme", "longer", "shorter"],
    )  # fmt: skip
    def test_a_malformed_authorization_header_is_401(self, api: Api, authorization: str) -> None:
        with api.http(headers={"Authorization": authorization}) as http:
            assert http.get("/api/v1/whoami").status_code == 401
            assert http.get(JOBS).status_code == 401

    def test_the_admin_token_works(self, api: Api) -> None:
        with api.http(headers={"Authorization": f"bearer  {ADMIN_TOKEN}"}) as http:
            assert http.get("/api/v1/whoami").json()["role"] == "admin"

    def test_healthz_needs_no_token(self, api: Api) -> None:
        response = httpx.get(f"{api.url}/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


class TestServerSurvivesBadInput:
    def test_no_job_was_created_and_a_good_job_still_runs(self, api: Api) -> None:
        _send_every_bad_request(api)
        with api.http() as http:
            assert http.get(JOBS).json() == []
        with api.running.client() as client:
            job = client.jobs.submit([PY, "-c", "print('still here')"], cpu=0.5)
            done = client.jobs.wait(job.id, timeout=30)
            assert done.status is JobStatus.SUCCEEDED
            assert client.jobs.logs(job.id) == "still here\n"
            assert [j.id for j in client.jobs.list()] == [job.id]


# (case id, raw JSON body of a job spec, the field the 422 must name). Raw, because a JSON
# encoder refuses to write NaN or 1e999, and Python's JSON parser (the server's) takes both.
_CMD = b'"command": ["true"], "resources": {"cpu": 0.5'
NUMBERS: list[tuple[str, bytes, str]] = [
    ("timeout-1e999", b"{" + _CMD + b'}, "timeout_s": 1e999}', "timeout_s"),
    ("timeout-nan", b"{" + _CMD + b'}, "timeout_s": NaN}', "timeout_s"),
    ("timeout-past-ten-years", b"{" + _CMD + b'}, "timeout_s": 1e300}', "timeout_s"),
    ("cpu-infinity", b'{"command": ["true"], "resources": {"cpu": Infinity}}', "resources.cpu"),
    ("memory-1e20", b"{" + _CMD + b', "memory": 1e20}}', "resources.memory"),
    ("memory-minus-infinity", b"{" + _CMD + b', "memory": -Infinity}}', "resources.memory"),
    ("gpus-20-digits", b"{" + _CMD + b', "gpus": 99999999999999999999}}', "resources.gpus"),
    ("priority-20-digits", b"{" + _CMD + b'}, "priority": 99999999999999999999}', "priority"),
]
QUOTAS: list[tuple[str, bytes, str]] = [
    ("memory-1e20", b'{"memory": 1e20}', "memory"),
    ("borrow-memory-20-digits", b'{"borrow_memory": 99999999999999999999}', "borrow_memory"),
    ("cpus-nan", b'{"cpus": NaN}', "cpus"),
    ("gpus-1e999", b'{"gpus": 1e999}', "gpus"),
]
JSON = {"Content-Type": "application/json"}


class TestNumbersAtTheEdge:
    """Numbers no column or timer can hold are refused where they arrive, naming their
    field, instead of failing deep inside (a 500) or being stored as non-standard JSON."""

    @pytest.mark.parametrize(
        ("raw", "field"), [c[1:] for c in NUMBERS], ids=[c[0] for c in NUMBERS]
    )
    def test_job_spec_numbers(self, api: Api, raw: bytes, field: str) -> None:
        with api.http() as http:
            _assert_names_field(http.post(JOBS, content=raw, headers=JSON), field)

    @pytest.mark.parametrize(("raw", "field"), [c[1:] for c in QUOTAS], ids=[c[0] for c in QUOTAS])
    def test_quota_numbers(self, api: Api, raw: bytes, field: str) -> None:
        with api.http() as http:
            assert http.post("/api/v1/workspaces", json={"name": "quota-ws"}).status_code in (
                201,
                409,
            )
            response = http.put("/api/v1/quotas/quota-ws", content=raw, headers=JSON)
            _assert_names_field(response, field)
            listed = http.get("/api/v1/quotas")
            assert listed.status_code == 200
            assert "quota-ws" not in {q["workspace"] for q in listed.json()}

    def test_logs_of_a_worker_past_any_gang(self, api: Api) -> None:
        with api.http() as http:
            job = http.post(JOBS, json=_spec(command=[PY, "-c", "pass"])).json()
            response = http.get(f"{JOBS}/{job['id']}/logs", params={"worker": "9" * 20})
            _assert_names_field(response, "query.worker")

    @pytest.mark.parametrize(
        "path",
        [f"{JOBS}/j-%00", "/api/v1/workspaces/de%00fault/jobs", f"{JOBS}?status=%00"],
        ids=["job-id", "workspace", "query"],
    )
    def test_a_nul_in_a_path_or_query_is_422(self, api: Api, path: str) -> None:
        with api.http() as http:
            response = http.get(path)
        assert response.status_code == 422, response.text
        assert "NUL" in response.json()["detail"]


# A job calls the job-token routes with its own token, sending what a broken or hostile
# job could: each line prints the status the server answered.
JOB_TOKEN_PROBES = r"""
import json, os, urllib.error, urllib.request
env = os.environ
api, job, token = env["KAON_API_URL"], env["KAON_JOB_ID"], env["KAON_JOB_TOKEN"]
def call(method, path, body=b"", headers=()):
    request = urllib.request.Request(
        f"{api}/api/v1/jobs/{job}{path}", data=body or None, method=method,
        headers={"Authorization": f"Bearer {token}", **dict(headers)})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
JSON = [("Content-Type", "application/json")]
long = "a" * 300
results = {
    "metrics-nan": call("POST", "/metrics", b'{"points": [{"values": {"loss": NaN}}]}', JSON),
    "metrics-inf": call("POST", "/metrics", b'{"points": [{"values": {"loss": 1e999}}]}', JSON),
    "metrics-step-2-63": call("POST", "/metrics",
        b'{"points": [{"step": 9223372036854775808, "values": {"loss": 1}}]}', JSON),
    "metrics-worker-20-digits": call("POST", "/metrics",
        b'{"worker": 99999999999999999999, "points": [{"values": {"loss": 1}}]}', JSON),
    "metrics-good": call("POST", "/metrics",
        b'{"points": [{"step": 9223372036854775807, "values": {"loss": 0.5}}]}', JSON),
    "put-long-name": call("PUT", f"/checkpoints/{long}", b"x", [("X-Kaon-Sha256", "0" * 64)]),
    "put-long-folder": call("PUT", f"/checkpoints/{long}/x", b"x",
        [("X-Kaon-Sha256", "0" * 64)]),
    "put-bad-sha": call("PUT", "/checkpoints/x", b"x", [("X-Kaon-Sha256", "zz")]),
    "get-long-name": call("GET", f"/checkpoints/{long}"),
    "delete-long-name": call("DELETE", f"/checkpoints/{long}"),
    "code-without-snapshot": call("GET", "/code"),
}
print(json.dumps(results))
"""


class TestJobTokenRoutes:
    def test_a_job_sending_bad_values_gets_4xx_and_stores_nothing(self, api: Api) -> None:
        with api.running.client() as client:
            job = client.jobs.submit([PY, "-c", JOB_TOKEN_PROBES], cpu=0.5)
            done = client.jobs.wait(job.id, timeout=60)
            log = client.jobs.logs(job.id)
        assert done.status is JobStatus.SUCCEEDED, log
        answers = json.loads(log.strip().splitlines()[-1])
        assert answers == {
            "metrics-nan": 422,
            "metrics-inf": 422,
            "metrics-step-2-63": 422,
            "metrics-worker-20-digits": 422,
            "metrics-good": 202,
            "put-long-name": 422,
            "put-long-folder": 422,
            "put-bad-sha": 422,
            "get-long-name": 422,
            "delete-long-name": 422,
            "code-without-snapshot": 404,
        }
        with api.http() as http:
            stored = http.get(f"{JOBS}/{job.id}/metrics").json()
        assert [(m["step"], m["value"]) for m in stored] == [(2**63 - 1, 0.5)]
