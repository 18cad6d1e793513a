"""The model registry: the words the server, the SDK and the CLI share.

A model is a name in a workspace whose versions are immutable: each holds an artifact of
kind ``model`` (the weights' folder), the code snapshot and the job that made it, and the
last value of each metric that job reported. An alias (``production``) is a movable name
for one version; a deployment can follow it::

    churn:3            version 3
    churn:production   whatever version `production` points at now (moving it rolls
                       the deployments that follow it)
    churn              the newest version, resolved once, when a deployment is made
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kaon.core.artifacts import parse_ref
from kaon.core.validation import check_name

_ALIAS = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_model_name(value: str) -> str:
    return check_name(value, "model name")


def check_alias(value: str) -> str:
    """An alias starts with a letter, so ``name:3`` is never read as an alias."""
    if not _ALIAS.match(value):
        raise ValueError(
            "alias must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return value


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS`` as (name, version, alias); ValueError
    naming the reference when it is none of them."""
    name, sep, tail = ref.partition(":")
    try:
        check_model_name(name)
        if not sep:
            return name, None, None
        if tail.isdigit():
            version = int(tail)
            if version < 1:
                raise ValueError
            return name, version, None
        return name, None, check_alias(tail)
    except ValueError:
        raise ValueError(
            f"model reference {ref!r} must be NAME, NAME:VERSION or NAME:ALIAS"
        ) from None


def check_model_ref(value: str) -> str:
    parse_model_ref(value)
    return value


class RegisterModel(BaseModel):
    """A new version, from a succeeded job's checkpoints or from an existing artifact."""

    model_config = ConfigDict(extra="forbid")

    from_job: str | None = Field(default=None, description="id of a job that succeeded")
    artifact: str | None = Field(default=None, description="NAME or NAME:VERSION of an artifact")
    description: str | None = Field(default=None, max_length=4096)
    alias: str | None = Field(default=None, description="point this alias at the new version")

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ref(value)
        return value

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str | None) -> str | None:
        return None if value is None else check_alias(value)

    @model_validator(mode="after")
    def _source(self) -> RegisterModel:
        if (self.from_job is None) == (self.artifact is None):
            raise ValueError("set exactly one of from_job and artifact")
        return self


class SetAlias(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1)


class ModelVersionView(BaseModel):
    model: str
    version: int
    artifact: str = Field(description="the artifact holding the weights, NAME:VERSION")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="last value of each metric the job reported"
    )
    snapshot: str | None = Field(default=None, description="sha256 of the job's code")
    source_job_id: str | None = None
    aliases: list[str] = Field(default_factory=list)
    created_by: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


class ModelView(BaseModel):
    name: str
    workspace: str
    description: str = ""
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict, description="alias -> version")
    versions: list[ModelVersionView] = Field(
        default_factory=list, description="newest first (only when one model is shown)"
    )
    created_by: str
    created_at: datetime
