"""The field rules that several specs share: names, environment variables, snapshots.

Each check returns the value or raises `ValueError` with a message that names what is
wrong; pydantic validators call them, so the API answers 422 with the field's path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

MAX_SECONDS = 10 * 365 * 24 * 3600.0
"""The longest duration a spec may ask for (ten years): longer is a typo, and a
``timedelta`` of ``1e300`` seconds overflows in the reconcilers that add it to a time."""

MAX_BYTES = 2**60
"""The largest size in bytes a spec or quota may name (1 EiB): under the 64-bit columns
that store it, far over any machine."""

MAX_INT64 = 2**63 - 1
"""The largest integer a 64-bit column holds (metric steps)."""

NAME_PATTERN = _NAME.pattern
"""A DNS label: what workspaces, tokens and deployments are called (they end up in URLs)."""

KAON_ENV_PREFIX = "KAON_"
RESERVED_ENV = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "LOCAL_WORLD_SIZE",
        "CUDA_VISIBLE_DEVICES",
    }
)
"""Variables Kaon sets for every worker (``KAON_*`` and the distributed layout); a spec
may not set or override them."""


def check_name(value: str, what: str = "name") -> str:
    """A DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'."""
    if not _NAME.match(value):
        raise ValueError(f"{what} must be 1-63 characters of a-z, 0-9 and '-'")
    return value


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def check_snapshot(value: str | None) -> str | None:
    """A code snapshot is named by the sha256 hex digest of its upload."""
    if value is not None and not is_sha256(value):
        raise ValueError("snapshot must be the sha256 hex digest of an uploaded folder")
    return value


def check_env(value: Mapping[str, str]) -> Mapping[str, str]:
    """Environment a user sets: valid names, no NUL, and nothing Kaon sets itself."""
    for key, item in value.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"env name {key!r} is not a valid variable name")
        if key in RESERVED_ENV or key.startswith(KAON_ENV_PREFIX):
            raise ValueError(f"env {key!r} is set by Kaon and cannot be overridden")
        if "\x00" in item:
            raise ValueError(f"env {key!r} must not contain NUL characters")
    return value


UserEnv = Annotated[dict[str, str], AfterValidator(check_env)]
"""A spec's ``env``: what a user may set for its workers or replicas."""

SnapshotRef = Annotated[str | None, AfterValidator(check_snapshot)]
"""A spec's ``snapshot``: the sha256 of an uploaded code folder, or none."""
