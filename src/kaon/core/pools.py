"""Pools: where the compute comes from. One pool is this machine (``local``); others are
Ray clusters a team attaches (``kaon pool add ray --address HOST:PORT``), whose nodes join
the one resource pool the scheduler places work on.

A pool is a network domain: its nodes reach each other, so a gang may span its nodes but
never two pools.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import check_name

LOCAL_POOL = "local"
_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


class PoolKind(enum.StrEnum):
    LOCAL = "local"  # this machine, as supervised child processes
    RAY = "ray"  # a Ray cluster: its nodes, process launch on them, and its autoscaler


class PoolState(enum.StrEnum):
    """How the control plane's connection to a pool stands."""

    CONNECTING = "connecting"  # added; the first connection is being made
    READY = "ready"  # connected; its nodes are in the pool
    UNREACHABLE = "unreachable"  # was connected, is not now; its jobs wait, none is failed
    ERROR = "error"  # cannot work as configured (wrong address, wrong Ray version)
    REMOVING = "removing"  # being detached; no new work is placed on it


class PoolSpec(BaseModel):
    """What an admin asks for: a Ray cluster to attach, under a name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(description="1-63 of a-z, 0-9, '-'; the pool's nodes are named after it")
    kind: PoolKind = PoolKind.RAY
    address: str = Field(description="the Ray cluster: GCS 'host:port', or 'ray://host:port'")
    api_url: str | None = Field(
        default=None,
        description="how the pool's nodes reach this control plane (code, checkpoints, "
        "metrics); default the control plane's public URL",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        check_name(value, "pool name")
        if value == LOCAL_POOL:
            raise ValueError(f"{LOCAL_POOL!r} is this machine's pool; pick another name")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _HOST_PORT.match(value):
            raise ValueError(
                f"address {value!r} is not 'host:port' (a Ray GCS, e.g. 10.0.0.5:6379) "
                "or 'ray://host:port' (a Ray Client server)"
            )
        port = int(value.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not between 1 and 65535")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: PoolKind) -> PoolKind:
        if value is PoolKind.LOCAL:
            raise ValueError("the local pool exists already; add Ray clusters")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("api_url must be an http:// or https:// URL")
        return value


class PoolView(BaseModel):
    name: str
    kind: PoolKind
    address: str | None = None
    state: PoolState
    message: str = ""
    nodes: int = Field(default=0, description="nodes ready for work")
    cpu: float = 0.0
    memory: int = 0
    gpus: int = 0
    elastic: bool = Field(default=False, description="an autoscaler can add nodes")
    created_at: datetime | None = None
