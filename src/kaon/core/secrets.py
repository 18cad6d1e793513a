"""Secrets and the audit log: the words the server, the SDK and the CLI share.

A spec never holds a secret's value, only a reference to it by name:

```yaml
env:
  LOG_LEVEL: debug                 # a plain value, stored in the spec as is
  API_KEY: {secret: openai-key}    # a reference: the spec stores only the name
  TLS_KEY: {secret: tls-key, file: true}  # the value in a file; the variable holds its path
```

The value is looked up when a worker starts, and reaches only that worker's process
(`kaon.server.services.secrets`). Views of secrets carry names, versions, who and when,
never values; audit records never carry values either.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
)

from kaon.core.validation import check_env, check_name

SECRET_ENV_MARKER = "KAON_SECRET_ENV"
"""Set in a worker's launch environment to the comma-separated names of the variables
that hold secrets: the worker's supervisor asks the control plane for their values just
before it starts the worker, so no value is ever written into a launch file."""

SECRET_FILES_MARKER = "KAON_SECRET_FILES"
"""The subset of `SECRET_ENV_MARKER`'s variables that get their value as a file: the
supervisor writes each value into a private folder in memory (tmpfs) and the variable
holds the file's path."""

MAX_SECRET_LENGTH = 64 * 1024  # characters of a value
MASK = "***"


class SecretRef(BaseModel):
    """``{secret: NAME}``: an environment variable whose value is a workspace's secret;
    ``{secret: NAME, file: true}``: one whose value is the path of a file holding it (for
    programs that read keys and certificates from files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(description="the name of a secret of the job's workspace")
    file: bool = Field(default=False, description="deliver the value as a file's contents")

    @model_serializer
    def _as_written(self) -> dict[str, object]:
        """The reference as a spec writes it: ``file`` only when set, so the specs stored
        before files existed read back unchanged."""
        return {"secret": self.secret, "file": True} if self.file else {"secret": self.secret}


def check_secret_name(value: str) -> str:
    """Secret names are DNS labels, like workspaces and deployments."""
    return check_name(value, "secret name")


def _check_env(value: Mapping[str, str | SecretRef]) -> Mapping[str, str | SecretRef]:
    """The rules of plain env (`check_env`) for every name, plus a valid secret name for
    every reference."""
    check_env({k: v if isinstance(v, str) else "" for k, v in value.items()})
    for item in value.values():
        if isinstance(item, SecretRef):
            check_secret_name(item.secret)
    return value


EnvValue = str | SecretRef
SpecEnv = Annotated[dict[str, EnvValue], AfterValidator(_check_env)]
"""A job's or deployment's ``env``: plain values and references to secrets."""


def plain_env(env: Mapping[str, EnvValue]) -> dict[str, str]:
    """The variables whose values the spec holds itself (safe to write anywhere)."""
    return {k: v for k, v in env.items() if isinstance(v, str)}


def secret_refs(env: Mapping[str, EnvValue]) -> dict[str, str]:
    """Variable name -> secret name, for the variables that reference secrets."""
    return {k: v.secret for k, v in env.items() if isinstance(v, SecretRef)}


def secret_files(env: Mapping[str, EnvValue]) -> list[str]:
    """The variables whose secret is delivered as a file, sorted."""
    return sorted(k for k, v in env.items() if isinstance(v, SecretRef) and v.file)


class SetSecret(BaseModel):
    """The body of ``PUT /workspaces/{ws}/secrets/{name}``."""

    model_config = ConfigDict(extra="forbid")

    value: str = Field(min_length=1, max_length=MAX_SECRET_LENGTH, repr=False)

    @field_validator("value")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        """A value becomes an environment variable, which cannot hold NUL."""
        if "\x00" in value:
            raise ValueError("a secret's value must not contain NUL characters")
        return value


class SecretView(BaseModel):
    """A secret as anyone may see it: never its value."""

    name: str
    workspace: str
    version: int
    created_by: str
    updated_by: str
    created_at: datetime
    updated_at: datetime


class RotationResult(BaseModel):
    """What a master-key rotation did: how many data keys it re-wrapped, under which key."""

    master_key_id: str
    rewrapped: int
    retired: list[str] = Field(default_factory=list)


class AuditRecordView(BaseModel):
    """One entry of the audit log. `hash` covers every other field and `prev_hash`, so an
    edited, removed or reordered record breaks the chain (`kaon audit verify`)."""

    seq: int
    time: datetime
    principal: str | None
    token_name: str | None
    workspace: str | None
    action: str
    resource: str | None
    outcome: str
    status: int
    source: str | None
    prev_hash: str
    hash: str


class AuditVerification(BaseModel):
    """The result of walking the chain: `ok`, how many records were checked, and the first
    record that does not fit (with why)."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None  # keep it elsewhere: a later verify must reach it
