"""Tokens and workspaces as the API shows them. Secrets are shown once, at creation."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import check_name


class WorkspaceView(BaseModel):
    name: str
    created_at: datetime


class CreateWorkspace(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "workspace name")


class TokenView(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="the first characters, to tell tokens apart")
    role: str
    workspaces: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    workspaces: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    role: str = Field(default="member", pattern="^(admin|member|gateway)$")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "token name")


class CreatedToken(TokenView):
    token: str = Field(description="the secret; shown only now")


class WhoAmI(BaseModel):
    token: str
    role: str
    workspaces: list[str]
