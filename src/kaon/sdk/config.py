"""Where the CLI and SDK find the control plane: flags, then env, then ``~/.kaon/config.json``."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8471"


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


def load_config() -> ClientConfig:
    data: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    return ClientConfig(
        url=os.environ.get("KAON_URL") or data.get("url") or DEFAULT_URL,
        token=os.environ.get("KAON_TOKEN") or data.get("token"),
        workspace=os.environ.get("KAON_WORKSPACE") or data.get("workspace") or "default",
        gateway_url=os.environ.get("KAON_GATEWAY_URL")
        or data.get("gateway_url")
        or DEFAULT_GATEWAY_URL,
    )


def save_config(config: ClientConfig) -> Path:
    """Write the config readable by this user only: it holds a token."""
    data = {
        "url": config.url,
        "token": config.token,
        "workspace": config.workspace,
        "gateway_url": config.gateway_url,
    }
    return _write(data)


def save_gateway_url(url: str) -> Path:
    """Record where the gateway answers, keeping everything else in the file as it is
    (values that came from the environment are not written down)."""
    path = config_path()
    data: dict[str, str | None] = {}
    if path.exists():
        with contextlib.suppress(json.JSONDecodeError):
            data = json.loads(path.read_text())
    data["gateway_url"] = url
    return _write(data)


def _write(data: dict[str, str | None]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path
