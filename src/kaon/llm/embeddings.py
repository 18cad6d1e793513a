"""OpenAI's ``/v1/embeddings`` for a ``sentence-transformers`` model folder.

```bash
export KAON_EMBEDDINGS_PATH=/models/all-MiniLM-L6-v2
kaon serve . --service kaon.llm.embeddings:EmbeddingService
```

One request embeds up to `EmbeddingService.max_inputs` texts in one call of the model (in
the replica's thread pool, as any ``def`` handler). ``encoding_format`` may be ``float``
or ``base64`` (little-endian float32, which the official client asks for by default). A text
longer than the model's window is refused (400 naming ``input``), never cut silently.
Nothing is downloaded: the folder must hold the model.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Literal, cast

import numpy as np
from pydantic import Field, ValidationError

from kaon.llm.protocol import _Strict, api_error, validation_error
from kaon.serving.service import Service, handler
from kaon.serving.streaming import Request, Response

__all__ = ["EmbeddingRequest", "EmbeddingService"]


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingService(Service):
    """Serves the model in ``model_path`` (default: ``$KAON_EMBEDDINGS_PATH``); its
    ``model_name`` is the folder's name unless a subclass sets one."""

    model_name: str | None = None
    model_path: str | None = None
    max_inputs = 256

    def setup(self) -> None:
        from sentence_transformers import SentenceTransformer

        path = self.model_path or os.environ.get("KAON_EMBEDDINGS_PATH")
        if not path:
            raise ValueError("set KAON_EMBEDDINGS_PATH to a sentence-transformers folder")
        self.model = cast(Any, SentenceTransformer(path, device="cpu", local_files_only=True))
        self.name = self.model_name or os.path.basename(os.path.normpath(path))
        self.window = int(self.model.max_seq_length)
        self.width = int(self.model.get_sentence_embedding_dimension())

    @handler(method="GET", path="/v1/models")
    def list_models(self) -> dict[str, Any]:
        """The one model this deployment serves."""
        card = {"id": self.name, "object": "model", "created": 0, "owned_by": "kaon"}
        return {"object": "list", "data": [card]}

    @handler(path="/v1/embeddings", run_inline=False)
    def embeddings(self, request: Request) -> Response:
        """OpenAI's embeddings."""
        try:
            req = EmbeddingRequest.model_validate_json(request.body or b"null")
        except ValidationError as exc:
            return Response(400, validation_error(exc))
        if req.model != self.name:
            return Response(
                404, api_error(f"The model `{req.model}` does not exist", "model",
                               code="model_not_found"),
            )  # fmt: skip
        texts = req.texts()
        if len(texts) > self.max_inputs:
            return _bad(f"at most {self.max_inputs} inputs per request", "input")
        if req.dimensions is not None and req.dimensions != self.width:
            return _bad(f"this model's embeddings have {self.width} dimensions", "dimensions")
        counts = [len(ids) for ids in self.model.tokenizer(texts)["input_ids"]]
        for i, count in enumerate(counts):
            if not texts[i]:
                return _bad("an input must not be empty", f"input.{i}")
            if count > self.window:
                message = f"input {i} has {count} tokens; this model reads at most {self.window}"
                return _bad(message, f"input.{i}")
        vectors = np.asarray(self.model.encode(texts, convert_to_numpy=True), dtype="<f4")
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return Response(200, {"object": "list", "data": data, "model": self.name, "usage": usage})


def _encode(vector: Any, form: str) -> Any:
    if form == "base64":
        return base64.b64encode(vector.tobytes()).decode()
    return vector.tolist()


def _bad(message: str, param: str) -> Response:
    return Response(400, api_error(message, param))
