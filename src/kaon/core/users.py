"""Users and their roles in workspaces, as the API shows them.

A user's role in a workspace is viewer (reads), member (also writes: jobs, deployments,
secrets, artifacts, models) or admin (also its members, tokens and audit log); an
instance admin (``is_admin``) may do everything everywhere.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import check_name

ROLE_PATTERN = "^(viewer|member|admin)$"


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    is_admin: bool = Field(default=False, description="the instance's administrator")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "user name")


class UserView(BaseModel):
    name: str
    is_admin: bool
    created_at: datetime
    created_by: str | None = None
    workspaces: dict[str, str] = Field(
        default_factory=dict, description="workspace -> the user's role there"
    )
    disabled: bool = Field(default=False, description="its tokens are refused until enabled")


class UpdateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool = Field(description="refuse the user's tokens (true) or accept them again")


class SetMember(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern=ROLE_PATTERN)


class MemberView(BaseModel):
    user: str
    workspace: str
    role: str
