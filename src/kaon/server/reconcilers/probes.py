"""Health probes of replicas: ``GET <url><path>`` within the check's timeout, 200 or not.

All replicas of a pass are probed at once over one pooled HTTP client, so a pass costs
one timeout at most however many replicas run. A probe carries the replica's own credential
(`kaon.core.replicas.REPLICA_KEY_HEADER`) like the gateway's requests, so a replica needs no
open endpoint, whichever path its health check names; and like the gateway, a probe sends
it only to a process that first proved it holds it (`kaon.core.replicas.HELLO_PATH`): a
process that took the port of a replica that ended neither passes a probe nor learns the
credential.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from kaon.core.deployments import HealthCheck
from kaon.core.replicas import (
    CHALLENGE_HEADER,
    HELLO_PATH,
    PROOF_HEADER,
    REPLICA_KEY_HEADER,
    challenge,
    proves,
)


@dataclass(frozen=True)
class ProbeTarget:
    job_id: str
    url: str
    check: HealthCheck
    key: str | None = None  # the replica's credential, sent as the gateway sends it


async def probe_all(http: httpx.AsyncClient, targets: list[ProbeTarget]) -> dict[str, bool]:
    """Replica job id -> whether its health check answered 200 in time."""

    async def probe(t: ProbeTarget) -> tuple[str, bool]:
        try:
            if t.key and not await _proven(http, t, t.key):
                return t.job_id, False
            headers = {REPLICA_KEY_HEADER: t.key} if t.key else None
            url = f"{t.url}{t.check.path}"
            response = await http.get(url, headers=headers, timeout=t.check.timeout_s)
        except httpx.HTTPError:
            return t.job_id, False
        return t.job_id, response.status_code == 200

    return dict(await asyncio.gather(*(probe(t) for t in targets)))


async def _proven(http: httpx.AsyncClient, t: ProbeTarget, key: str) -> bool:
    """Whether the process on the replica's port proves it holds `key`."""
    asked = challenge()
    response = await http.get(
        f"{t.url}{HELLO_PATH}", headers={CHALLENGE_HEADER: asked}, timeout=t.check.timeout_s
    )
    return response.status_code == 200 and proves(key, asked, response.headers.get(PROOF_HEADER))
