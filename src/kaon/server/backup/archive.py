"""The backup file on disk: an encrypting writer and a checking, decrypting reader.

The writer writes to ``<file>.partial`` and renames it into place once the header (with
the body's size and sha256, known only at the end) is written over its placeholder: a
backup cut short by a crash or a full disk never looks like a whole one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kaon.server.backup.format import (
    HEADER_BYTES,
    NONCE,
    TAG,
    U32,
    BackupRefusedError,
    Header,
    chunk_aad,
    decode_header,
    encode_header,
    sign,
)

Progress = Callable[[str, int, int], None]
"""Told (phase, done, total) as work goes on; the CLI draws it."""

READ = 1 << 20


def no_progress(phase: str, done: int, total: int) -> None:
    return None


class ArchiveWriter:
    """Seals a plaintext stream into chunks under `key`; `close` writes the header."""

    def __init__(self, path: Path, header: Header, key: bytes) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._header = header
        self._key = key
        self._aead = AESGCM(key)
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._chunks = 0
        self._plain = 0
        self._body = 0
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._out = os.fdopen(fd, "wb")
        self._out.write(encode_header(header))  # a placeholder of the same length

    def write(self, data: bytes) -> None:
        self._buf += data
        self._plain += len(data)
        size = self._header.chunk_size
        while len(self._buf) > size:  # the last chunk is sealed as such by `close`
            self._seal(bytes(self._buf[:size]), last=False)
            del self._buf[:size]

    def write_all(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def _seal(self, plain: bytes, last: bool) -> None:
        nonce = os.urandom(NONCE)
        aad = chunk_aad(self._header.backup_id, self._chunks, last)
        sealed = nonce + self._aead.encrypt(nonce, plain, aad)
        framed = U32.pack(len(sealed)) + sealed
        self._out.write(framed)
        self._sha.update(framed)
        self._chunks += 1
        self._body += len(framed)

    def close(self, contents: dict[str, Any], schema_revision: str) -> Header:
        """Seal the rest, write the signed header in place, and move the file into place."""
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()
        header = sign(
            replace(
                self._header,
                chunks=self._chunks,
                plaintext_bytes=self._plain,
                body_bytes=self._body,
                body_sha256=self._sha.hexdigest(),
                contents=contents,
                schema_revision=schema_revision,
            ),
            self._key,
        )
        self._out.seek(0)
        self._out.write(encode_header(header))
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self.partial, self.path)
        return header

    def abort(self) -> None:
        self._out.close()
        self.partial.unlink(missing_ok=True)


def read_header(path: Path) -> Header:
    try:
        with path.open("rb") as f:
            start = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise BackupRefusedError(f"no such backup file: {path}") from None
    except IsADirectoryError:
        raise BackupRefusedError(f"{path} is a folder, not a backup file") from None
    return decode_header(start)


def body_digest(path: Path, header: Header, progress: Progress) -> str:
    """The sha256 of the body, read once from start to end."""
    sha = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        f.seek(HEADER_BYTES)
        while block := f.read(READ * 4):
            sha.update(block)
            done += len(block)
            progress("checking", done, header.body_bytes)
    return sha.hexdigest()


def plaintext(path: Path, header: Header, key: bytes, progress: Progress) -> Iterator[bytes]:
    """The body's plaintext chunk by chunk; every chunk is authenticated before it is
    yielded, and a missing, extra or reordered chunk is refused."""
    aead = AESGCM(key)
    limit = header.chunk_size + NONCE + TAG
    done = 0
    with path.open("rb") as f:
        f.seek(HEADER_BYTES)
        for index in range(header.chunks):
            raw = f.read(U32.size)
            if len(raw) < U32.size:
                raise BackupRefusedError("the backup is truncated: a chunk is missing")
            (size,) = U32.unpack(raw)
            if not NONCE + TAG <= size <= limit:
                raise BackupRefusedError(f"the backup is damaged: chunk {index} has a bad length")
            sealed = f.read(size)
            if len(sealed) < size:
                raise BackupRefusedError("the backup is truncated: a chunk is cut short")
            aad = chunk_aad(header.backup_id, index, index == header.chunks - 1)
            try:
                plain = aead.decrypt(sealed[:NONCE], sealed[NONCE:], aad)
            except InvalidTag:
                raise BackupRefusedError(
                    f"the backup was altered: chunk {index} does not decrypt"
                ) from None
            done += U32.size + size
            progress("reading", done, header.body_bytes)
            yield plain
        if f.read(1):
            raise BackupRefusedError("the backup has bytes after its last chunk")
