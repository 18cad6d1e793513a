"""Envelope encryption: per-workspace data keys, wrapped by a master key.

```
 secret value --AES-256-GCM(data key of its workspace)--> secrets.ciphertext   (database)
 data key     --wrap(master key)-----------------------> workspace_keys.wrapped (database)
 master key   --------------------------------------------> KAON_MASTER_KEY, a 0600 file, or a KMS
```

The database alone decrypts nothing, and the master key alone holds no data, so a copy of
the database (a backup, a stolen disk) is useless without the master key. Rotating the
master key re-wraps the data keys (a few hundred bytes each), never the data.

The master key sits behind a small plug-in interface, `KeyWrapper`: anything that can
wrap and unwrap a 32-byte key under a key id, such as a cloud KMS, can hold it instead.
Kaon ships two: `FileMasterKeys` (a key file in ``KAON_HOME``, created 0600 on first
start; the default) and `EnvMasterKeys` (``KAON_MASTER_KEY``). ``KAON_KMS_PLUGIN`` names
``module:factory``, called with the home folder, to plug in another.

Every ciphertext is bound to where it belongs with AES-GCM's associated data (a data key
to its workspace, a secret to its workspace, name and version), so a row copied into
another workspace or another secret fails to decrypt instead of leaking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kaon.core.errors import KaonError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce
MASTER_KEY_FILE = "master.key"
ENV_MASTER_KEY = "KAON_MASTER_KEY"
ENV_KMS_PLUGIN = "KAON_KMS_PLUGIN"


class KeyUnavailableError(KaonError):
    """A key is missing or does not fit: the master key that wrapped a data key is not
    among those this server holds, or a ciphertext was altered."""

    status_code = 500


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored: wrapped under the master key named `key_id`."""

    key_id: str
    blob: bytes


@runtime_checkable
class KeyWrapper(Protocol):
    """The master key's plug-in interface (a KMS): wrap and unwrap data keys.

    `context` is associated data (the workspace's id): an unwrap with another context
    fails. `current_key_id` names the key new wraps use; `unwrap` must still accept every
    key id it wrapped under until those are retired, which is what lets a rotation run
    while the server serves.
    """

    def current_key_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...


@runtime_checkable
class SupportsNewKey(Protocol):
    """A key wrapper that can make a new master key itself and forget old ones (the key
    file can; a key given in the environment cannot, as only its owner can change it)."""

    def add_key(self) -> str: ...

    def retire(self, key_ids: set[str]) -> list[str]: ...


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random nonce: ``nonce || ciphertext+tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext of `seal`; KeyUnavailableError when the key, the data or `aad` do not fit."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as e:
        raise KeyUnavailableError("cannot decrypt: wrong key, or the data was altered") from e


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def key_id_of(key: bytes) -> str:
    """A master key's public name: a digest that tells keys apart and reveals nothing."""
    return "mk-" + hashlib.sha256(b"kaon master key id\0" + key).hexdigest()[:16]


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def decode_key(text: str) -> bytes:
    """A master key as written in a key file or KAON_MASTER_KEY: url-safe base64 (or hex)
    of 32 bytes."""
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else base64.urlsafe_b64decode(text)
    except (ValueError, binascii.Error) as e:
        raise KeyUnavailableError("a master key must be 32 bytes in url-safe base64 or hex") from e
    if len(key) != KEY_BYTES:
        raise KeyUnavailableError(f"a master key must be {KEY_BYTES} bytes, not {len(key)}")
    return key


class EnvMasterKeys:
    """Master keys held in memory, the first one current: from ``KAON_MASTER_KEY``
    (comma-separated, newest first, while a rotation moves data keys to the new one)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyUnavailableError("no master key")
        self._keys = {key_id_of(k): k for k in keys}
        self._current = key_id_of(keys[0])

    def current_key_id(self) -> str:
        return self._current

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        return WrappedKey(self._current, seal(self._keys[self._current], data_key, context))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        key = self._keys.get(wrapped.key_id)
        if key is None:
            raise KeyUnavailableError(
                f"the data key was wrapped by master key {wrapped.key_id}, which this "
                "server does not hold; see docs/data.md, 'Losing the master key'"
            )
        return unseal(key, wrapped.blob, context)


class FileMasterKeys(EnvMasterKeys):
    """Master keys in a file of the home (one per line, newest first), made 0600 on first
    start. It can make a new key and drop retired ones itself, so rotation needs no
    restart: both keys serve unwraps until every data key is re-wrapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            _write_private(path, [new_data_key()])
        super().__init__(_read_keys(path))

    def add_key(self) -> str:
        keys = [new_data_key(), *self._keys.values()]
        _write_private(self.path, keys)
        self._keys = {key_id_of(k): k for k in keys}
        self._current = key_id_of(keys[0])
        return self._current

    def retire(self, key_ids: set[str]) -> list[str]:
        """Forget the keys named (never the current one); the ids forgotten."""
        gone = [i for i in self._keys if i in key_ids and i != self._current]
        if gone:
            keep = [k for i, k in self._keys.items() if i not in gone]
            _write_private(self.path, keep)
            self._keys = {key_id_of(k): k for k in keep}
        return gone


def _read_keys(path: Path) -> list[bytes]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [decode_key(line) for line in lines]


def _write_private(path: Path, keys: list[bytes]) -> None:
    """Write the key file atomically, readable by the server's user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(encode_key(k) + "\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_master_keys(home: Path, environ: dict[str, str] | None = None) -> KeyWrapper:
    """The master key, from (in order) a KMS plug-in, ``KAON_MASTER_KEY``, or the key
    file of the home (made on first start)."""
    env = dict(os.environ) if environ is None else environ
    plugin = env.get(ENV_KMS_PLUGIN)
    if plugin:
        module, _, attr = plugin.partition(":")
        factory: Callable[[Path], KeyWrapper] = getattr(importlib.import_module(module), attr)
        wrapper = factory(home)
        if not isinstance(wrapper, KeyWrapper):
            raise KeyUnavailableError(f"{plugin} did not return a KeyWrapper")
        return wrapper
    given = env.get(ENV_MASTER_KEY)
    if given:
        return EnvMasterKeys([decode_key(part) for part in given.split(",") if part.strip()])
    return FileMasterKeys(home / MASTER_KEY_FILE)


class KeyRing:
    """The master key plus a cache of unwrapped data keys, so a request decrypts with one
    AES operation instead of a KMS call. Cached by the wrapped blob: a re-wrapped key is
    a new entry, and the old one is never wrong (a data key does not change)."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        self.wrapper = wrapper
        self._cache: dict[tuple[str, bytes], bytes] = {}

    def new_wrapped_key(self, context: str) -> WrappedKey:
        return self.wrapper.wrap(new_data_key(), context.encode())

    def data_key(self, wrapped: WrappedKey, context: str) -> bytes:
        found = self._cache.get((context, wrapped.blob))
        if found is None:
            found = self.wrapper.unwrap(wrapped, context.encode())
            self._cache[(context, wrapped.blob)] = found
        return found

    def rewrap(self, wrapped: WrappedKey, context: str) -> WrappedKey:
        """The same data key under the current master key."""
        return self.wrapper.wrap(self.data_key(wrapped, context), context.encode())
