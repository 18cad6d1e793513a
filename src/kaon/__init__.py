"""Kaon: an open-source AI cloud.

The top-level package stays light: importing `kaon` inside a training job costs almost
nothing. The SDK client, the serving SDK and the trainer load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kaon._version import __version__
from kaon.report import report

__all__ = ["Client", "Service", "__version__", "explain", "handler", "report"]

if TYPE_CHECKING:  # pragma: no cover
    from kaon.sdk.client import Client

_LAZY = {
    "Client": ("kaon.sdk.client", "Client"),
    "Service": ("kaon.serving.service", "Service"),
    "handler": ("kaon.serving.service", "handler"),
    "explain": ("kaon.train.explain", "explain"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kaon' has no attribute {name!r}")
