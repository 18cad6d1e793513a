"""Blob values as stored: the plaintext in chunks of about a MiB, each sealed with
AES-256-GCM.

```
 value  = MAGIC || record(0) || record(1) || ... || record(n)       (n >= 0; n = 0 if empty)
 record = nonce (12 bytes, random) || ciphertext of one chunk || tag (16 bytes)
 aad(i) = "kaon-blob:v1:" workspace ":" sha256 ":" i ":" last
```

Chunks let a blob of any size stream through in constant memory, in both directions.
They are sized so that MAGIC and record 0, and every later record, take exactly 1 MiB:
a store read a MiB at a time hands over whole records, which open without a copy.
Each record's associated data binds it to its workspace, its blob (the plaintext's
sha256), its place and whether it is the last, so a value copied to another workspace or
key, records swapped, or a value cut short after a whole record all fail to open
instead of yielding other bytes. Readers also recompute the plaintext's sha256 and refuse
a mismatch (`open_value`), which catches a value sealed under a false name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kaon.core.errors import KaonError

MAGIC = b"KAONBLB1"
RECORD = 1 << 20  # a full record's stored size (record 0's, with MAGIC before it)
NONCE = 12
TAG = 16
CHUNK = RECORD - NONCE - TAG  # plaintext bytes per full record
FIRST = CHUNK - len(MAGIC)  # plaintext bytes of record 0


class TamperedBlobError(KaonError):
    """A stored value does not open: it was altered, truncated, moved, or sealed under
    another key. Nothing of it is returned past the damage."""

    status_code = 500


def _aad(workspace_id: str, sha256: str, index: int, last: bool) -> bytes:
    return f"kaon-blob:v1:{workspace_id}:{sha256}:{index}:{int(last)}".encode()


def stored_size(size: int) -> int:
    """The stored size of a plaintext of `size` bytes."""
    records = 1 + max(0, -(-(size - FIRST) // CHUNK))
    return len(MAGIC) + size + records * (NONCE + TAG)


class _Exact:
    """Reads exact byte counts from an iterable of chunks of any size, copying each byte
    once (chunks are joined only when a read spans them)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._parts: list[bytes | memoryview] = []
        self._have = 0

    def take(self, n: int) -> memoryview:
        """The next `n` bytes (fewer only at the end), as a view: no copy is made of a
        chunk that holds them all."""
        while self._have < n:
            chunk = next(self._it, None)
            if chunk is None:
                break
            if chunk:
                self._parts.append(chunk)
                self._have += len(chunk)
        whole = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        view = memoryview(whole)
        out, rest = view[:n], view[n:]
        self._parts = [rest] if len(rest) else []
        self._have -= len(out)
        return out

    def at_end(self) -> bool:
        while not self._have:
            chunk = next(self._it, None)
            if chunk is None:
                return True
            if chunk:
                self._parts.append(chunk)
                self._have += len(chunk)
        return False


def _pieces(plain: Iterable[bytes]) -> Iterator[tuple[memoryview, bool]]:
    """The plaintext in pieces of FIRST, then CHUNK bytes, each with whether it is the
    last (one empty piece for an empty plaintext)."""
    reader = _Exact(plain)
    size = FIRST
    while True:
        piece = reader.take(size)
        size = CHUNK
        last = reader.at_end()
        yield piece, last
        if last:
            return


class HashMismatchError(KaonError):
    """The plaintext being sealed does not hash to the name it is sealed under."""

    status_code = 422


def seal_value(
    key: bytes,
    workspace_id: str,
    sha256: str,
    plain: Iterable[bytes],
    *,
    verify: bool = False,
) -> Iterator[bytes]:
    """The stored value of the plaintext `plain` (any chunking) for blob `sha256`.

    With `verify`, the plaintext is hashed piece by piece as it is sealed (one pass over
    the bytes, a MiB per call, which releases the GIL) and `HashMismatchError` is raised
    instead of yielding the last record when it is not `sha256`: a store that writes
    atomically then never keeps a value sealed under a false name."""
    aead = AESGCM(key)
    digest = hashlib.sha256() if verify else None
    yield MAGIC
    for index, (piece, last) in enumerate(_pieces(plain)):
        if digest is not None:
            digest.update(piece)
            if last and digest.hexdigest() != sha256:
                raise HashMismatchError(
                    f"the uploaded bytes hash to {digest.hexdigest()}, not {sha256}"
                )
        nonce = os.urandom(NONCE)
        yield nonce  # apart: joining them would copy the whole record once more
        yield aead.encrypt(nonce, piece, _aad(workspace_id, sha256, index, last))


def open_value(
    key: bytes, workspace_id: str, sha256: str, stored: Iterable[bytes]
) -> Iterator[bytes]:
    """The plaintext of a stored value, chunk by chunk; `TamperedBlobError` as soon as a
    record does not open, when the value ends early, or (after the last chunk, before
    the iterator ends) when the plaintext's sha256 is not `sha256`."""
    aead = AESGCM(key)
    digest = hashlib.sha256()
    reader = _Exact(stored)
    if reader.take(len(MAGIC)) != MAGIC:
        raise TamperedBlobError(f"blob {sha256}: not a sealed Kaon blob")
    index = 0
    while True:
        record = reader.take(RECORD - len(MAGIC) if index == 0 else RECORD)
        last = reader.at_end()
        try:
            aad = _aad(workspace_id, sha256, index, last)
            plain = aead.decrypt(record[:NONCE], record[NONCE:], aad)
        except (InvalidTag, ValueError):
            raise TamperedBlobError(
                f"blob {sha256}: record {index} does not open (altered, cut short or moved)"
            ) from None
        digest.update(plain)
        yield plain
        if last:
            break
        index += 1
    if digest.hexdigest() != sha256:
        raise TamperedBlobError(f"blob {sha256}: the plaintext's sha256 does not match")
