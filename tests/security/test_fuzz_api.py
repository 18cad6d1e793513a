"""The whole API, fuzzed from its own OpenAPI document: no generated request, valid or
not, gets a server error (5xx) from a real control plane on loopback.

Schemathesis generates requests for every operation, both ones that follow the schema
(positive) and ones that break it (negative). Each request is sent with the token of one
role (admin, member or viewer of the default workspace, a gateway's, or, on the job-token
routes, a launched attempt's own token) and, half the time, with the path naming things
that exist (the default workspace, a real job), so requests get past the 404 into the
code behind it.

Bounded so the whole run stays well under a minute per database: a few examples per
operation and mode, and a time budget after which the rest of the operations get one
example each.
"""

from __future__ import annotations

import os
import time
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.security.conftest import Quiet

SCALE = float(os.environ.get("KAON_FUZZ_SCALE", "1"))  # more examples for a longer hunt
EXAMPLES = {GenerationMode.POSITIVE: round(8 * SCALE), GenerationMode.NEGATIVE: round(5 * SCALE)}
BUDGET_S = 20.0 * SCALE  # per database; past it, one example per operation and mode
JOB_ROUTES = "/api/v1/jobs/"  # the routes a job's own token opens


def _run_operation(
    quiet: Quiet, operation: Any, mode: GenerationMode, examples: int, errors: list[str]
) -> None:
    tokens = quiet.tokens
    role_tokens = [tokens.admin, tokens.member, tokens.viewer, tokens.gateway]
    if operation.path.startswith(JOB_ROUTES):
        role_tokens.append(tokens.job)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SCALE == 1,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        token=st.sampled_from(role_tokens),
        real_names=st.booleans(),
    )
    def send(case: Any, token: str, real_names: bool) -> None:
        if real_names and isinstance(case.path_parameters, dict):
            _name_real_things(case.path_parameters, tokens.job_id)
        response = case.call(
            base_url=quiet.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        if response.status_code >= 500:
            errors.append(
                f"{operation.label} ({mode.value}) -> {response.status_code}: "
                f"{response.text[:300]}\n  {case.as_curl_command()}"
            )

    try:
        send()
    except Unsatisfiable:
        pass  # nothing to break in this operation (negative mode with no parameters)


def _breakable(operation: Any) -> bool:
    """Whether a request that breaks the operation's schema can be made at all: it has a
    body, or a parameter constrained beyond "any string". Path parameters that take any
    string cannot be broken, and asking Hypothesis for such a request makes it search for
    seconds before giving up."""
    raw = operation.definition.raw
    return "requestBody" in raw or not all(
        _any_string(p.get("schema", {})) for p in raw.get("parameters", [])
    )


def _any_string(schema: dict[str, Any]) -> bool:
    if "anyOf" in schema:
        return all(_any_string(s) for s in schema["anyOf"])
    return schema.get("type") in ("string", "null") and set(schema) <= {"type", "title"}


def _name_real_things(path: dict[str, Any], job_id: str) -> None:
    if "workspace" in path:
        path["workspace"] = "default"
    if "job_id" in path:
        path["job_id"] = job_id


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(quiet: Quiet) -> None:
    schema = schemathesis.openapi.from_url(f"{quiet.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30  # the whole API, not a page of it
    errors: list[str] = []
    started = time.monotonic()
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            if mode is GenerationMode.NEGATIVE and not _breakable(operation):
                continue
            if time.monotonic() - started > BUDGET_S:
                examples = 1
            _run_operation(quiet, operation, mode, examples, errors)
    assert not errors, "\n".join(errors)
