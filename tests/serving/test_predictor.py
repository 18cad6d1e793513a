"""The ready-made Predictor on a checkpoint written by kaon.train's own checkpoint code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")

from kaon.serving.app import ReplicaApp  # noqa: E402
from kaon.serving.predictor import Predictor  # noqa: E402
from kaon.train.checkpoint import FORMAT, save_checkpoint  # noqa: E402
from tests.serving.helpers import running, wait_ready  # noqa: E402
from tests.serving.services import tiny_mlp  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_mlp()
    card = {
        "format": FORMAT, "factory": "tests.serving.services:tiny_mlp", "factory_kwargs": {},
        "input_shape": [2], "input_dtype": "float32", "output_shape": [1], "loss": "bce",
    }  # fmt: skip
    save_checkpoint(root, 10, model.state_dict(), {}, card | {"step": 10}, keep=2)
    return root


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    with running(ReplicaApp(Predictor(model_dir))) as base:
        wait_ready(base, timeout=30)
        yield base


class TestPredictor:
    def test_predict_matches_the_model(self, url: str) -> None:
        x = [[0.5, -1.0], [2.0, 3.0]]
        r = httpx.post(f"{url}/predict", json={"x": x})
        assert r.status_code == 200
        with torch.inference_mode():
            expected = tiny_mlp()(torch.tensor(x)).tolist()
        got = [v for row in r.json()["outputs"] for v in row]
        assert got == pytest.approx([v for row in expected for v in row])

    def test_wrong_shape_is_422_naming_x(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", json={"x": [[1.0, 2.0, 3.0]]})
        assert r.status_code == 422
        assert r.json()["detail"] == "x: shape [1, 3], expected [N, 2]"
        ragged = httpx.post(f"{url}/predict", json={"x": [[1.0], [1.0, 2.0]]})
        assert ragged.status_code == 422

    def test_unknown_field_is_422(self, url: str) -> None:
        r = httpx.post(f"{url}/predict", json={"x": [[0.5, -1.0]], "y": [1.0]})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "y"]

    def test_explain(self, url: str) -> None:
        pytest.importorskip("captum")
        r = httpx.post(f"{url}/explain", json={"x": [[0.5, -1.0]]})
        assert r.status_code == 200
        assert len(r.json()["attributions"][0]) == 2

    def test_missing_model_dir_fails_setup(self, tmp_path: Path) -> None:
        app = ReplicaApp(Predictor(tmp_path))
        with running(app) as base:
            for _ in range(200):
                if httpx.get(f"{base}/ready").json()["status"] == "failed":
                    break
                time.sleep(0.05)
            ready = httpx.get(f"{base}/ready").json()
        assert ready["status"] == "failed"
        assert "no valid checkpoint" in ready["reason"]
