"""The sealed value format on its own: round trips at the sizes around record edges, and
every way of moving, cutting or altering a value fails to open."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kaon.server.storage.blobstore import LocalBlobStore
from kaon.server.storage.sealed import (
    CHUNK,
    FIRST,
    MAGIC,
    RECORD,
    HashMismatchError,
    TamperedBlobError,
    open_value,
    seal_value,
    stored_size,
)

KEY = bytes(range(32))


def sealed(data: bytes, workspace: str = "ws-a") -> tuple[str, bytes]:
    sha = hashlib.sha256(data).hexdigest()
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    return sha, b"".join(seal_value(KEY, workspace, sha, pieces))


def opened(value: bytes, sha: str, workspace: str = "ws-a", read: int = RECORD) -> bytes:
    reads = [value[i : i + read] for i in range(0, len(value), read)]
    return b"".join(open_value(KEY, workspace, sha, reads))


@pytest.mark.parametrize("size", [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + CHUNK, 3 * CHUNK])
def test_round_trip_at_record_edges(size: int) -> None:
    data = os.urandom(size)
    sha, value = sealed(data)
    assert len(value) == stored_size(size)
    assert opened(value, sha) == data
    assert opened(value, sha, read=4097) == data  # any read size
    if size > FIRST:
        assert len(value) > RECORD and value[:RECORD].startswith(MAGIC)


class TestRefused:
    data = os.urandom(2 * CHUNK + 10)

    def test_another_workspace(self) -> None:
        sha, value = sealed(self.data)
        with pytest.raises(TamperedBlobError, match="record 0"):
            opened(value, sha, workspace="ws-b")

    def test_another_blob_name(self) -> None:
        sha, value = sealed(self.data)
        with pytest.raises(TamperedBlobError):
            opened(value, hashlib.sha256(b"x").hexdigest())

    def test_cut_after_a_whole_record(self) -> None:
        sha, value = sealed(self.data)
        with pytest.raises(TamperedBlobError, match="record 1"):
            opened(value[: 2 * RECORD], sha)

    def test_records_swapped(self) -> None:
        sha, value = sealed(self.data)
        swapped = value[:RECORD] + value[2 * RECORD :] + value[RECORD : 2 * RECORD]
        with pytest.raises(TamperedBlobError, match="record 1"):
            opened(swapped, sha)

    def test_one_bit_flipped(self) -> None:
        sha, value = sealed(self.data)
        flipped = bytearray(value)
        flipped[RECORD + 100] ^= 0x80
        with pytest.raises(TamperedBlobError, match="record 1"):
            opened(bytes(flipped), sha)

    def test_sealed_under_a_false_name(self) -> None:
        """A value sealed with the right key but named for other bytes opens record by
        record, and is refused at the end by the sha256 check."""
        false = hashlib.sha256(b"other bytes").hexdigest()
        value = b"".join(seal_value(KEY, "ws-a", false, [self.data]))
        with pytest.raises(TamperedBlobError, match="sha256 does not match"):
            opened(value, false)

    def test_not_a_sealed_value(self) -> None:
        with pytest.raises(TamperedBlobError, match="not a sealed Kaon blob"):
            opened(self.data, hashlib.sha256(self.data).hexdigest())


class TestVerifiedSealing:
    """Sealing with `verify` hashes as it seals and refuses a false name before the last
    record, so an atomic store keeps nothing and never replaces a good value."""

    @pytest.mark.parametrize("size", [0, 10, FIRST, 2 * CHUNK + 5])
    def test_a_true_name_seals_as_without_verify(self, size: int) -> None:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        value = b"".join(seal_value(KEY, "ws-a", sha, [data], verify=True))
        assert opened(value, sha) == data

    def test_a_false_name_never_replaces_the_stored_value(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        good = os.urandom(2 * CHUNK + 7)
        sha = hashlib.sha256(good).hexdigest()
        store.put(f"ws-a/{sha}", seal_value(KEY, "ws-a", sha, [good], verify=True))
        before = b"".join(store.get(f"ws-a/{sha}"))
        bad = good[:-1] + bytes([good[-1] ^ 1])  # differs in the last byte only
        with pytest.raises(HashMismatchError, match=f"not {sha}"):
            store.put(f"ws-a/{sha}", seal_value(KEY, "ws-a", sha, [bad], verify=True))
        assert b"".join(store.get(f"ws-a/{sha}")) == before
        assert opened(before, sha) == good
        assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [sha]  # no temp left
