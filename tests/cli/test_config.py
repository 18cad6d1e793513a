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


def test_a_daemon_never_inherits_the_shells_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kaon up` starts its processes with the caller's environment, less the tokens a
    shell may hold for the CLI: other processes of the user can read a process's
    environment, and a gateway or control plane needs none of them."""
    import time

    from kaon.cli.daemon import Daemon

    monkeypatch.setenv("KAON_TOKEN", "kaon_shell-token")
    monkeypatch.setenv("KAON_GATEWAY_TOKEN", "kaon_shell-gateway-token")
    monkeypatch.setenv("KAON_SOMETHING_ELSE", "kept")
    out = tmp_path / "env.json"
    (tmp_path / "dump_env.py").write_text(
        "import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    daemon = Daemon(tmp_path, "dump", "dump_env")
    daemon.start({"PYTHONPATH": str(tmp_path), "GIVEN": "yes"}, [str(out)])
    deadline = time.monotonic() + 30
    while not out.exists() or not out.read_text().endswith("}"):
        assert time.monotonic() < deadline, daemon.log_file.read_text()
        time.sleep(0.05)
    seen = json.loads(out.read_text())
    assert "KAON_TOKEN" not in seen and "KAON_GATEWAY_TOKEN" not in seen
    assert seen["KAON_SOMETHING_ELSE"] == "kept" and seen["GIVEN"] == "yes"
