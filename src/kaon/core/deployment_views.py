"""Deployments as the API shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from kaon.core.deployments import DeploymentSpec


class ReplicaView(BaseModel):
    job_id: str
    generation: int
    state: str  # starting | ready | unhealthy | stopping | stopped | failed
    url: str | None = None
    pid: int | None = None
    message: str = ""
    created_at: datetime


class DeploymentView(BaseModel):
    name: str
    workspace: str
    status: str  # pending | starting | ready | updating | scaled-to-zero | failing | deleting
    message: str = ""
    spec: DeploymentSpec
    generation: int
    desired_replicas: int
    ready_replicas: int = 0
    replicas: list[ReplicaView] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class CreateDeploymentToken(BaseModel):
    name: str = Field(default="token", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DeploymentTokenCreated(BaseModel):
    id: str
    name: str
    deployment: str
    token: str = Field(description="the secret; shown only now")
