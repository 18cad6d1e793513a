"""Identifiers and secrets."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "kaon_"


def new_id(kind: str) -> str:
    """A short random id with a kind prefix, e.g. ``j-3f9c2a7b1d04``."""
    return f"{kind}-{secrets.token_hex(6)}"


def new_token() -> str:
    """A bearer token: 256 bits of randomness."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are random and long, so one SHA-256 is the right hash (no salt or stretching
    is needed: there is no dictionary to guess from), and lookup stays one index probe."""
    return hashlib.sha256(token.encode()).hexdigest()
