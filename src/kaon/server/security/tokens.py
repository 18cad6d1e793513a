"""Making tokens, and the key that derives job tokens.

API tokens are random (`new_token`) and stored only as their SHA-256. A job's workers get a
token of their own per attempt (`job_token`), derived with HMAC from a key that only the
control plane holds: derived, not stored, so a launch repeated after a crash hands out the
same token, while the database keeps only its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from kaon.core.tokens import TOKEN_PREFIX

JOB_TOKEN_PREFIX = "kjob_"
REPLICA_KEY_PREFIX = "krep_"
KEY_FILE = "server.key"
ADMIN_TOKEN_FILE = "admin-token"  # the first admin token, when no terminal saw it


def new_token() -> str:
    """A bearer token: 256 bits of randomness behind a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_id(kind: str) -> str:
    """A short random id with a kind prefix, e.g. ``j-3f9c2a7b1d04``: not a secret (ids
    show up in URLs and logs), only unique enough for a table's primary key."""
    return f"{kind}-{secrets.token_hex(6)}"


def job_token(key: bytes, job_id: str, attempt: int) -> str:
    """The token the workers of one attempt of a job use to call back (metrics)."""
    mac = hmac.new(key, f"{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()
    return f"{JOB_TOKEN_PREFIX}{mac}"


def replica_key(key: bytes, job_id: str, attempt: int) -> str:
    """The credential of one attempt of a replica: the gateway adds it to each request it
    forwards, and the replica refuses any request without it. Derived like `job_token`
    (nothing to store, the same after a crash), from a message of its own so that it never
    equals a job token."""
    mac = hmac.new(key, f"replica:{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()
    return f"{REPLICA_KEY_PREFIX}{mac}"


def load_token_key(home: Path) -> bytes:
    """The key that signs job tokens: made once, readable by the server's user only (a
    key made before that rule is made private on the next start). Whoever reads it can
    forge any job's token, so it never leaves the control plane's home: workers get
    tokens, not the key."""
    path = home / KEY_FILE
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    os.chmod(path, 0o600)
    return bytes.fromhex(path.read_text().strip())


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically, readable and writable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
