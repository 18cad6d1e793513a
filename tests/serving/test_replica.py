"""The replica app over real HTTP: typed handlers, errors, batching, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from kaon.serving.app import ReplicaApp
from tests.serving.helpers import running, wait_ready
from tests.serving.services import Batched, Classifier, SlowSetup


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One Classifier replica shared by the read-only tests of this module."""
    with running(ReplicaApp(Classifier())) as base:
        wait_ready(base)
        yield base


class TestHandlers:
    def test_typed_handler(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", json={"x": [[0.5, -1.0], [1, 2]]})
        assert r.status_code == 200
        assert r.json() == [0.5, 4.0]

    def test_pydantic_body_async_handler(self, url: str) -> None:
        r = httpx.post(f"{url}/add", json={"x": 1.5, "y": 2})
        assert r.json() == {"total": 3.5}

    def test_get_handler_takes_query(self, url: str) -> None:
        assert httpx.get(f"{url}/scale", params={"value": "3"}).json() == 6.0
        assert httpx.get(f"{url}/scale", params={"value": 3, "factor": 3}).json() == 9.0

    def test_wrong_type_is_422_naming_the_field(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", json={"x": [[0.5, "much"]]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "x", 0, 1]

    def test_missing_and_unknown_fields_are_422(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", json={"z": 1})
        locs = {tuple(e["loc"]) for e in r.json()["detail"]}
        assert r.status_code == 422
        assert locs == {("body", "x"), ("body", "z")}

    def test_malformed_json_is_422(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", content=b'{"x": [[0.5,')
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "json_invalid"

    def test_body_over_limit_is_413(self, url: str) -> None:
        assert httpx.post(f"{url}/small", json={"text": "a" * 10}).json() == 10
        r = httpx.post(f"{url}/small", json={"text": "a" * 100})
        assert r.status_code == 413

    def test_chunked_body_over_limit_is_413(self, url: str) -> None:
        chunks = iter([b'{"text": "', b"a" * 100, b'"}'])
        assert httpx.post(f"{url}/small", content=chunks).status_code == 413

    def test_timeout_is_504(self, url: str) -> None:
        assert httpx.post(f"{url}/slow", json={"seconds": 0}).json() == "done"
        assert httpx.post(f"{url}/slow", json={"seconds": 2}).status_code == 504

    def test_handler_error_is_500_with_reason(self, url: str) -> None:
        r = httpx.post(f"{url}/boom")
        assert r.status_code == 500
        assert "RuntimeError: kaboom" in r.json()["detail"]

    def test_unknown_route_and_method(self, url: str) -> None:
        assert httpx.post(f"{url}/nope").status_code == 404
        assert httpx.get(f"{url}/predict").status_code == 405


class TestRequestValidation:
    """What a 422 says: unknown fields are refused, and ``loc`` says where the field was."""

    def test_unknown_field_of_a_model_body_is_422(self, url: str) -> None:
        r = httpx.post(f"{url}/add", json={"x": 1, "y": 2, "z": 3})
        assert r.status_code == 422
        assert r.json()["detail"] == [
            {
                "loc": ["body", "z"],
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
        ]

    def test_model_body_reaches_the_handler_as_its_own_class(self, url: str) -> None:
        r = httpx.post(f"{url}/point_type", json={"x": 1, "y": 2})
        assert r.json() == {"is_point": True, "equal": True}

    def test_model_that_allows_extra_keeps_unknown_fields(self, url: str) -> None:
        r = httpx.post(f"{url}/tag", json={"name": "a", "colour": "red"})
        assert r.status_code == 200
        assert r.json() == {"name": "a", "extra": {"colour": "red"}, "is_tagged": True}

    @pytest.mark.parametrize(
        ("params", "loc", "type_"),
        [
            ({"value": "much"}, ["query", "value"], "float_parsing"),
            ({}, ["query", "value"], "missing"),
            ({"value": "3", "factr": "2"}, ["query", "factr"], "extra_forbidden"),
        ],
    )
    def test_query_parameter_errors_are_located_in_query(
        self, url: str, params: dict[str, str], loc: list[str], type_: str
    ) -> None:
        r = httpx.get(f"{url}/scale", params=params)
        assert r.status_code == 422
        assert [(e["loc"], e["type"]) for e in r.json()["detail"]] == [(loc, type_)]


class TestBuiltins:
    def test_health_and_ready(self, url: str) -> None:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/ready").json() == {"status": "ready", "reason": None}

    def test_metrics(self, url: str) -> None:
        httpx.post(f"{url}/predict", json={"x": [[1.0]]})
        text = httpx.get(f"{url}/metrics").text
        assert 'kaon_replica_requests_total{code="200",handler="predict"}' in text
        assert 'kaon_replica_request_duration_seconds_count{handler="predict"}' in text
        assert 'kaon_replica_in_flight{handler="predict"} 0.0' in text

    def test_openapi_and_docs(self, url: str) -> None:
        doc = httpx.get(f"{url}/openapi.json").json()
        body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        schema = doc["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
        assert schema["properties"]["x"]["type"] == "array"
        assert doc["components"]["schemas"]["Point"]["additionalProperties"] is False
        assert doc["components"]["schemas"]["Tagged"]["additionalProperties"] is True
        assert "swagger" in httpx.get(f"{url}/docs").text.lower()


class TestReadiness:
    def test_not_ready_until_setup_returns(self) -> None:
        service = SlowSetup()
        with running(ReplicaApp(service)) as base:
            assert httpx.get(f"{base}/healthz").status_code == 200
            r = httpx.get(f"{base}/ready")
            assert r.status_code == 503
            assert r.json()["status"] == "starting"
            refused = httpx.post(f"{base}/ping")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            service.release.set()
            wait_ready(base, timeout=5)
            assert httpx.post(f"{base}/ping").json() == "pong"


class TestBatching:
    async def test_concurrent_requests_arrive_as_one_batch(self) -> None:
        service = Batched()
        with running(ReplicaApp(service)) as base:
            wait_ready(base)
            async with httpx.AsyncClient(base_url=base) as client:
                calls = [client.post("/double", json={"x": i}) for i in range(6)]
                replies = await asyncio.gather(*calls)
                metrics = (await client.get("/metrics")).text
        assert [r.json() for r in replies] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        assert service.batches == [6]
        assert 'kaon_replica_batch_size_count{handler="double"} 1.0' in metrics

    def test_batched_model_body_refuses_unknown_fields(self) -> None:
        with running(ReplicaApp(Batched())) as base:
            wait_ready(base)
            assert httpx.post(f"{base}/sums", json={"x": 1, "y": 2}).json() == 3.0
            r = httpx.post(f"{base}/sums", json={"x": 1, "y": 2, "z": 3})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "z"]


class TestCredential:
    """A replica given a credential answers only requests that carry it (the gateway's,
    the control plane's probes); without one (`kaon serve`) it is open, as above."""

    def test_refuses_every_route_without_its_key(self) -> None:
        key = "krep_the-replicas-own"
        with running(ReplicaApp(Classifier(), key=key)) as base:
            own = {"x-kaon-replica-key": key}
            wait_ready(base, headers=own)
            body = {"x": [[0.5, -1.0]]}
            assert httpx.post(f"{base}/predict", json=body, headers=own).json() == [0.5]
            for headers in ({}, {"x-kaon-replica-key": "krep_wrong"},
                            {"x-kaon-replica-key": key[:-1]}):  # fmt: skip
                r = httpx.post(f"{base}/predict", json=body, headers=headers)
                assert r.status_code == 403, r.text
                for path in ("/ready", "/healthz", "/metrics", "/docs", "/nowhere"):
                    assert httpx.get(f"{base}{path}", headers=headers).status_code == 403
