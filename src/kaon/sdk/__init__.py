"""The Python SDK: `kaon.Client` over HTTP, reusing the core models."""

from kaon.sdk.client import Client

__all__ = ["Client"]
