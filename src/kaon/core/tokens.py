"""How a bearer token is stored and compared: its SHA-256, never the token itself.

Tokens are 256 random bits, so one SHA-256 is the right hash: there is no dictionary to
guess from (no salt or stretching needed), and a lookup stays one index probe. The control
plane stores these digests, and the gateway receives them in its route table and hashes
the bearer of each request to compare.
"""

from __future__ import annotations

import hashlib

TOKEN_PREFIX = "kaon_"
"""Every API token starts with this, so a leaked one is easy to recognise and scan for."""


def hash_token(token: str | bytes) -> str:
    """The sha256 hex digest under which a token is stored and routed."""
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).hexdigest()
