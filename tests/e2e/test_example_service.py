"""`kaon serve` runs the hand-written seed classifier service as one local replica."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytest.importorskip("torch")
EXAMPLE = Path(__file__).parents[2] / "examples" / "binary_classifier"


@pytest.mark.e2e
def test_kaon_serve_runs_the_example_service() -> None:
    port = free_port()
    kaon = Path(sys.executable).with_name("kaon")
    proc = subprocess.Popen(
        [str(kaon), "serve", str(EXAMPLE), "--service", "serve:Classifier", "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the replica did not start"
            time.sleep(0.1)
        response = httpx.post(f"{url}/predict", json={"x": [[0.5, -1.0], [2.0, 2.0]]})
        assert response.status_code == 200
        assert len(response.json()) == 2 and all(0 <= p <= 1 for p in response.json())
        assert httpx.post(f"{url}/predict", json={"x": "no"}).status_code == 422
        assert "openapi" in httpx.get(f"{url}/openapi.json").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
