"""Where the CLI and SDK find the control plane: flags, then env, then ``~/.kaon/config.json``.

A home (``KAON_HOME``, default ``~/.kaon``) also names its own control plane: the server
makes an instance id on its first start (``instance-id`` in the home) and serves it on
``/healthz``; `kaon up` records it in ``config.json`` and compares, so it never takes another
home's server on the same port for its own."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8471"
INSTANCE_ID_FILE = "instance-id"  # written by the control plane (kaon.server.app)


def home() -> Path:
    return Path(os.environ.get("KAON_HOME", Path.home() / ".kaon")).expanduser()


def config_path() -> Path:
    return home() / "config.json"


@dataclass(frozen=True)
class ClientConfig:
    url: str = DEFAULT_URL
    token: str | None = None
    workspace: str = "default"
    gateway_url: str = DEFAULT_GATEWAY_URL  # where deployments answer (`kaon up` saves it)
    # The certificate an https control plane is verified by (its CA's, or its own,
    # pinned); None: the system's trust store. KAON_CA_FILE, or `kaon up --tls-*` saves it.
    ca_file: str | None = None


def load_config() -> ClientConfig:
    data = _read()
    return ClientConfig(
        url=os.environ.get("KAON_URL") or data.get("url") or DEFAULT_URL,
        token=os.environ.get("KAON_TOKEN") or data.get("token"),
        workspace=os.environ.get("KAON_WORKSPACE") or data.get("workspace") or "default",
        gateway_url=os.environ.get("KAON_GATEWAY_URL")
        or data.get("gateway_url")
        or DEFAULT_GATEWAY_URL,
        ca_file=os.environ.get("KAON_CA_FILE") or data.get("ca_file"),
    )


def save_config(config: ClientConfig) -> Path:
    """Write the config readable by this user only: it holds a token. What else the file
    records (this home's instance id) stays: logging in elsewhere does not change which
    control plane is this home's own."""
    changes = {
        "url": config.url,
        "token": config.token,
        "workspace": config.workspace,
        "gateway_url": config.gateway_url,
    }
    if config.ca_file is not None:  # KAON_CA_FILE at login, or `kaon up` over TLS
        changes["ca_file"] = config.ca_file
    return _update(changes)


def save_gateway_url(url: str) -> Path:
    """Record where the gateway answers, keeping everything else in the file as it is
    (values that came from the environment are not written down)."""
    return _update({"gateway_url": url})


def save_ca_file(ca_file: str) -> Path:
    """Record the certificate this home's control plane is verified by (`kaon up`)."""
    return _update({"ca_file": ca_file})


def save_instance_id(instance_id: str) -> Path:
    """Record the instance id of the control plane `kaon up` started for this home."""
    return _update({"instance_id": instance_id})


def own_instance_id() -> str | None:
    """The instance id of this home's control plane: the file its server made in the home,
    else the copy `kaon up` recorded (None before the first start)."""
    with contextlib.suppress(OSError):
        return (home() / INSTANCE_ID_FILE).read_text().strip() or None
    return _read().get("instance_id")


def _read() -> dict[str, str | None]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _update(changes: dict[str, str | None]) -> Path:
    return _write({**_read(), **changes})


def _write(data: dict[str, str | None]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path
