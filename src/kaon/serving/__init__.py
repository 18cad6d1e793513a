"""Serving: the Service SDK (`Service`, `handler`) and the replica runtime.

Importing this package stays light; the web stack loads only in the replica process
(`kaon.serving.runtime`) or when an app is built (`kaon.serving.app`).
"""

from kaon.serving.service import Service, handler

__all__ = ["Service", "handler"]
