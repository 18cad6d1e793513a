"""A ready-made service for models trained with `kaon.train`: no serving code to write.

A ``from_job`` deployment runs ``kaon.serving.predictor:Predictor`` with ``KAON_MODEL_DIR``
pointing at the job's checkpoint folder. `setup` loads the newest valid checkpoint there
(`kaon.train.load_model`: incomplete or corrupt ones are skipped) and rebuilds the model
from the factory its model card names, so the factory's module must be importable from the
replica's working directory (the job's uploaded folder).

- ``POST /predict`` ``{"x": [[0.5, -1.0], ...]}`` -> ``{"outputs": [[0.73], ...]}``
- ``POST /explain`` (when Captum is installed) -> ``{"attributions": [[0.1, -0.4], ...]}``,
  integrated gradients per input feature (`kaon.train.explain`).

Inputs are checked against the card's ``input_shape``; a mismatch is a 422 naming ``x``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kaon.core.errors import InvalidSpecError
from kaon.core.replicas import ENV_MODEL_DIR
from kaon.serving.service import Service, handler

__all__ = ["Predictor", "PredictRequest", "PredictResponse", "ExplainResponse"]

_HAS_EXPLAIN = importlib.util.find_spec("captum") is not None


class PredictRequest(BaseModel):
    x: list[Any] = Field(description="a batch of inputs, nested lists shaped like the model's")


class PredictResponse(BaseModel):
    outputs: list[Any]


class ExplainResponse(BaseModel):
    attributions: list[Any] = Field(description="same shape as x")


class Predictor(Service):
    """Serves the newest checkpoint under ``$KAON_MODEL_DIR``."""

    def __init__(self, model_dir: str | os.PathLike[str] | None = None) -> None:
        self.model_dir = model_dir
        self.card: dict[str, Any] = {}
        self._explain_lock = threading.Lock()  # captum's hooks are not thread-safe

    def setup(self) -> None:
        import torch

        from kaon.train import load_model, read_model_card

        folder = self.model_dir or os.environ.get(ENV_MODEL_DIR)
        if not folder:
            raise RuntimeError(f"set {ENV_MODEL_DIR} to a folder of kaon.train checkpoints")
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.card = read_model_card(Path(folder))
        self.model = load_model(Path(folder))
        self._dtype = getattr(torch, str(self.card.get("input_dtype", "float32")))

    def _tensor(self, x: list[Any]) -> Any:
        import torch

        try:
            tensor = torch.tensor(x, dtype=self._dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidSpecError(f"x: not a rectangular array of numbers ({exc})", "x") from None
        expected = list(self.card.get("input_shape") or tensor.shape[1:])
        if tensor.dim() == 0 or list(tensor.shape[1:]) != expected:
            shape, wanted = list(tensor.shape), ", ".join(["N", *map(str, expected)])
            raise InvalidSpecError(f"x: shape {shape}, expected [{wanted}]", "x")  # [N, 2]
        return tensor

    @handler
    def predict(self, request: PredictRequest) -> PredictResponse:
        from kaon.train import predict

        outputs = predict(self.model, self._tensor(request.x))
        return PredictResponse(outputs=outputs.tolist())

    if _HAS_EXPLAIN:

        @handler
        def explain(self, request: PredictRequest) -> ExplainResponse:
            from kaon.train.explain import explain

            with self._explain_lock:
                attributions = explain(self.model, self._tensor(request.x))
            return ExplainResponse(attributions=attributions.tolist())
