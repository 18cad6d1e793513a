"""`kaon up` on real processes: a taken port is named at once, and a home never takes
another home's control plane for its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WORKER_UIDS_OFF

pytestmark = pytest.mark.e2e

KAON = [sys.executable, "-c", "from kaon.cli.main import main; main()"]


def free_port_pair() -> int:
    """A port P with P and P+1 free on loopback."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65000 and _free(port + 1):
            return port
    raise RuntimeError("no two free ports in a row")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kaon(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAON_")} | WORKER_UIDS_OFF
    env.update(KAON_HOME=str(home), COLUMNS="200", KAON_LOCAL_NODES="1")
    return subprocess.run([*KAON, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    a, b = tmp_path / "a", tmp_path / "b"
    yield a, b
    for home in (a, b):
        kaon(home, "down", timeout=60)


def test_a_port_held_by_another_program_is_named_at_once(homes: tuple[Path, Path]) -> None:
    home, _ = homes
    port = free_port_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        started = time.monotonic()
        result = kaon(home, "up", "--port", str(port), "--gateway-port", str(port + 1))
        took = time.monotonic() - started
    assert result.returncode != 0, result.stdout
    assert f"port {port} is taken by another program" in result.stderr
    assert "kaon up --port" in result.stderr  # what to do instead
    assert took < 30, "it must not wait out the start timeout"  # generous: 60 s is the bug
    assert "Kaon control plane:" not in result.stdout


def test_a_home_refuses_another_homes_control_plane(homes: tuple[Path, Path]) -> None:
    home_a, home_b = homes
    port = free_port_pair()
    first = kaon(home_a, "up", "--port", str(port), "--gateway-port", str(port + 1))
    assert first.returncode == 0, first.stderr
    assert f"http://127.0.0.1:{port}" in first.stdout

    foreign = kaon(home_b, "up", "--port", str(port), "--gateway-port", str(port + 1))
    assert foreign.returncode != 0, foreign.stdout
    assert f"port {port} is taken by another Kaon control plane" in foreign.stderr
    assert str(home_a) in foreign.stderr  # the other home is named
    assert "Kaon control plane:" not in foreign.stdout

    again = kaon(home_a, "up", "--port", str(port), "--gateway-port", str(port + 1))
    assert again.returncode == 0, again.stderr  # its own home reuses it
    assert f"http://127.0.0.1:{port}" in again.stdout
