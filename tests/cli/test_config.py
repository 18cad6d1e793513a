"""The client config file: what `kaon login` and `kaon up` write, what commands read."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kaon.sdk.config import (
    DEFAULT_GATEWAY_URL,
    ClientConfig,
    config_path,
    load_config,
    save_config,
    save_gateway_url,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KAON_URL", "KAON_TOKEN", "KAON_WORKSPACE", "KAON_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAON_HOME", str(tmp_path))
    return tmp_path


def test_the_gateway_address_kaon_up_saved_is_what_commands_print() -> None:
    save_config(ClientConfig(url="http://127.0.0.1:9000", token="kaon_x", workspace="team"))
    assert load_config().gateway_url == DEFAULT_GATEWAY_URL
    save_gateway_url("http://127.0.0.1:9471")
    config = load_config()
    assert config == ClientConfig(
        "http://127.0.0.1:9000", "kaon_x", "team", "http://127.0.0.1:9471"
    )
    assert stat.S_IMODE(config_path().stat().st_mode) == 0o600  # it holds a token


def test_environment_values_win_and_are_never_written_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAON_TOKEN", "kaon_from_env")
    monkeypatch.setenv("KAON_GATEWAY_URL", "http://gw.example:8471")
    save_gateway_url("http://127.0.0.1:9471")
    assert load_config().gateway_url == "http://gw.example:8471"
    assert json.loads(config_path().read_text()) == {"gateway_url": "http://127.0.0.1:9471"}
