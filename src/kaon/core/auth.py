"""Tokens and workspaces as the API shows them. Secrets are shown once, at creation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kaon.core.validation import check_name

MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400.0  # ten years: past that, a date no column holds


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
    user: str | None = Field(default=None, description="the user it acts for")
    prefix: str = Field(description="the first characters, to tell tokens apart")
    role: str
    workspaces: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="refused from then on")
    parent_id: str | None = Field(
        default=None, description="the token that minted it; revoking that one revokes this"
    )


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    workspaces: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    role: str = Field(default="member", pattern="^(admin|member|viewer|gateway)$")
    user: str | None = Field(
        default=None, description="the user it acts for; none: the creating token's user"
    )
    expires_at: datetime | None = Field(
        default=None, description="when it stops working (with a time zone); at most its parent's"
    )
    expires_in: float | None = Field(
        default=None, gt=0, le=MAX_TOKEN_LIFETIME_S, description="seconds from now, instead"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "token name")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError("needs a time zone, e.g. 2026-12-31T00:00:00Z")
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01 at +14:00: no UTC moment
            raise ValueError("out of range") from None

    @model_validator(mode="after")
    def _one_lifetime(self) -> CreateToken:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        return self


class CreatedToken(TokenView):
    token: str = Field(description="the secret; shown only now")


class WhoAmI(BaseModel):
    token: str
    role: str
    workspaces: list[str]
    user: str | None = None
    roles: dict[str, str] = Field(default_factory=dict, description="workspace -> role")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: datetime) -> datetime:
    """When a token given ``--expires`` stops working: a duration from `now` (``90s``,
    ``30m``, ``12h``, ``7d``, ``2w``) or a moment (``2026-12-31``, which is midnight UTC
    at its start, or an ISO date and time; UTC unless it says otherwise). ValueError for
    anything else."""
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower())
    if unit is not None and text[:-1].isdigit():
        return now + timedelta(seconds=int(text[:-1]) * unit)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (7d, 12h, 30m) nor a date (2026-12-31)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class DeploymentTokenView(BaseModel):
    """A deployment's token as lists show it: its name and first characters, never the
    secret."""

    id: str
    name: str
    prefix: str
    deployment: str
    created_at: datetime
    revoked_at: datetime | None = None
