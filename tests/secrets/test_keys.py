"""Envelope encryption and log masking, as pure functions: what a key, a context and a
rotation allow, and what a masked log shows."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from kaon.server.security.keys import (
    MASTER_KEY_FILE,
    EnvMasterKeys,
    FileMasterKeys,
    KeyRing,
    KeyUnavailableError,
    WrappedKey,
    decode_key,
    load_master_keys,
    seal,
    unseal,
)
from kaon.server.services.secrets import LogMasker

KEY = bytes(range(32))


class TestSeal:
    def test_round_trip(self) -> None:
        blob = seal(KEY, b"sk-123", b"ws-1")
        assert b"sk-123" not in blob
        assert unseal(KEY, blob, b"ws-1") == b"sk-123"

    def test_two_seals_of_one_value_differ(self) -> None:
        assert seal(KEY, b"v", b"a") != seal(KEY, b"v", b"a")  # a fresh nonce each time

    @pytest.mark.parametrize(
        ("key", "aad", "flip"),
        [(bytes(32), b"ws-1", False), (KEY, b"ws-2", False), (KEY, b"ws-1", True)],
        ids=["wrong key", "another workspace", "altered ciphertext"],
    )
    def test_what_does_not_fit_fails(self, key: bytes, aad: bytes, flip: bool) -> None:
        blob = bytearray(seal(KEY, b"sk-123", b"ws-1"))
        if flip:
            blob[-1] ^= 1
        with pytest.raises(KeyUnavailableError):
            unseal(key, bytes(blob), aad)


class TestMasterKeys:
    def test_the_key_file_is_made_once_and_private(self, tmp_path: Path) -> None:
        first = load_master_keys(tmp_path, environ={})
        path = tmp_path / MASTER_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        again = load_master_keys(tmp_path, environ={})
        assert first.current_key_id() == again.current_key_id()

    def test_kaon_master_key_wins_over_the_file(self, tmp_path: Path) -> None:
        text = base64.urlsafe_b64encode(KEY).decode()
        keys = load_master_keys(tmp_path, environ={"KAON_MASTER_KEY": text})
        assert isinstance(keys, EnvMasterKeys) and not isinstance(keys, FileMasterKeys)
        assert not (tmp_path / MASTER_KEY_FILE).exists()
        assert keys.current_key_id() == EnvMasterKeys([KEY]).current_key_id()

    @pytest.mark.parametrize("text", ["short", base64.urlsafe_b64encode(b"x" * 16).decode()])
    def test_a_malformed_master_key_is_refused(self, text: str) -> None:
        with pytest.raises(KeyUnavailableError, match="32 bytes"):
            decode_key(text)

    def test_a_data_key_unwraps_only_in_its_workspace(self) -> None:
        ring = KeyRing(EnvMasterKeys([KEY]))
        wrapped = ring.new_wrapped_key("ws-1")
        assert len(ring.data_key(wrapped, "ws-1")) == 32
        with pytest.raises(KeyUnavailableError):
            KeyRing(EnvMasterKeys([KEY])).data_key(wrapped, "ws-2")

    def test_an_unknown_master_key_is_named(self) -> None:
        wrapped = KeyRing(EnvMasterKeys([KEY])).new_wrapped_key("ws")
        with pytest.raises(KeyUnavailableError, match="does not hold"):
            KeyRing(EnvMasterKeys([bytes(32)])).data_key(wrapped, "ws")

    def test_rotation_keeps_old_keys_until_retired(self, tmp_path: Path) -> None:
        keys = FileMasterKeys(tmp_path / MASTER_KEY_FILE)
        ring = KeyRing(keys)
        old = ring.new_wrapped_key("ws")
        data_key = ring.data_key(old, "ws")
        old_id = keys.current_key_id()
        new_id = keys.add_key()
        assert new_id != old_id
        assert KeyRing(keys).data_key(old, "ws") == data_key  # both serve meanwhile
        new = ring.rewrap(old, "ws")
        assert new.key_id == new_id and new.blob != old.blob
        assert keys.retire({old_id, new_id}) == [old_id]  # never the current one
        reloaded = KeyRing(FileMasterKeys(tmp_path / MASTER_KEY_FILE))
        assert reloaded.data_key(new, "ws") == data_key
        with pytest.raises(KeyUnavailableError):
            reloaded.data_key(old, "ws")
        assert len((tmp_path / MASTER_KEY_FILE).read_text().split()) == 1

    def test_a_kms_plug_in_is_loaded_by_name(self, tmp_path: Path) -> None:
        keys = load_master_keys(
            tmp_path, environ={"KAON_KMS_PLUGIN": "tests.secrets.fake_kms:make"}
        )
        ring = KeyRing(keys)
        wrapped = ring.new_wrapped_key("ws")
        assert wrapped.key_id == "fake-kms-1"
        assert ring.data_key(WrappedKey(wrapped.key_id, wrapped.blob), "ws")


def mask(values: list[str], chunks: list[bytes], start: int = 0, emit_from: int = 0) -> bytes:
    masker = LogMasker(values, start, emit_from)
    out = b"".join(masker.feed(c) for c in chunks)
    return out + masker.feed(b"", final=True)


class TestLogMasker:
    @pytest.mark.parametrize(
        ("chunks", "expected"),
        [
            ([b"key=s3cret\n"], b"key=***\n"),
            ([b"key=s3c", b"ret\n"], b"key=***\n"),  # split across two reads
            ([b"s", b"3", b"c", b"r", b"e", b"t"], b"***"),
            ([b"s3cre"], b"s3cre"),  # a prefix at the very end is not the value
            ([b"s3cret s3cret"], b"*** ***"),
            ([b"no secrets here\n"], b"no secrets here\n"),
        ],
    )
    def test_values_become_stars(self, chunks: list[bytes], expected: bytes) -> None:
        assert mask(["s3cret"], chunks) == expected

    def test_text_that_cannot_start_a_value_is_not_held_back(self) -> None:
        masker = LogMasker(["s3cret"], 0, 0)
        assert masker.feed(b"epoch 1\n") == b"epoch 1\n"  # a followed log shows it now
        assert masker.feed(b"key=s3c") == b"key="  # "s3c" may begin the value: held
        assert masker.feed(b"ret\n") == b"***\n"

    def test_a_shorter_value_waits_for_a_longer_one(self) -> None:
        masker = LogMasker(["ab", "abcd"], 0, 0)
        assert masker.feed(b"xabc") == b"x"
        assert masker.feed(b"d ab!") == b"*** ***!"

    def test_the_longest_value_wins(self) -> None:
        assert mask(["abc", "abcdef"], [b"abcdef abc"]) == b"*** ***"

    def test_a_read_from_inside_a_value_shows_none_of_it(self) -> None:
        # the log is "x=s3cret!"; a client asks from offset 4 ("cret!")
        assert mask(["s3cret"], [b"x=s3cret!"], start=0, emit_from=4) == b"***!"
        assert mask(["s3cret"], [b"x=s3cret!"], start=0, emit_from=8) == b"!"

    def test_output_is_unchanged_without_values(self) -> None:
        data = os.urandom(4096)
        assert mask(["\x00never\x00"], [data[:1000], data[1000:]]) == data


def test_masking_in_pieces_equals_masking_at_once() -> None:
    """Any split of a log into reads masks exactly as the whole log at once would."""
    import random
    import re

    rng = random.Random(7)
    values = ["s3cret", "s3c", "tok-42", "xx"]
    pattern = re.compile(b"|".join(re.escape(v.encode()) for v in sorted(values, key=len)[::-1]))
    alphabet = b"s3cretok-42x \n"
    for _ in range(300):
        log = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        cuts = sorted(rng.sample(range(len(log) + 1), k=min(len(log) + 1, rng.randint(0, 6))))
        pieces = [log[a:b] for a, b in zip([0, *cuts], [*cuts, len(log)], strict=True)]
        assert mask(values, pieces) == pattern.sub(b"***", log), (log, pieces)
