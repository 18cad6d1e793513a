"""A KMS plug-in for tests: what `KAON_KMS_PLUGIN` loads (``module:factory``)."""

from __future__ import annotations

from pathlib import Path

from kaon.server.security.keys import WrappedKey, seal, unseal

_KEY = b"k" * 32


class FakeKms:
    """Wraps with a fixed key under a fixed id, as a cloud KMS would under its key's ARN."""

    def current_key_id(self) -> str:
        return "fake-kms-1"

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        return WrappedKey("fake-kms-1", seal(_KEY, data_key, context))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return unseal(_KEY, wrapped.blob, context)


def make(home: Path) -> FakeKms:
    return FakeKms()
