"""Health probes of replicas: ``GET <url><path>`` within the check's timeout, 200 or not.

All replicas of a pass are probed at once over one pooled HTTP client, so a pass costs
one timeout at most however many replicas run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from kaon.core.deployments import HealthCheck


@dataclass(frozen=True)
class ProbeTarget:
    job_id: str
    url: str
    check: HealthCheck


async def probe_all(http: httpx.AsyncClient, targets: list[ProbeTarget]) -> dict[str, bool]:
    """Replica job id -> whether its health check answered 200 in time."""

    async def probe(t: ProbeTarget) -> tuple[str, bool]:
        try:
            response = await http.get(f"{t.url}{t.check.path}", timeout=t.check.timeout_s)
        except httpx.HTTPError:
            return t.job_id, False
        return t.job_id, response.status_code == 200

    return dict(await asyncio.gather(*(probe(t) for t in targets)))
