"""`ModelDirLLM`: the LLM service ``kaon deploy create NAME --llm`` runs, with no code of
the user's: it serves whatever model folder the replica is given in ``KAON_MODEL_DIR``
(a registered model version, materialised by the control plane).

What it can load is a Hugging Face causal LM folder, as ``save_pretrained`` writes it
(``config.json``, the weights and the tokenizer's files), through `kaon.llm.hf`. A
`kaon.train` checkpoint (``model_card.json``) is refused with the reason: its card tells
how to rebuild the network, but no job saves its tokenizer (``examples/gpt`` trains on
token ids, ``examples/char_lm`` builds its alphabet from its text file), so text could
not be turned into the model's tokens; such a model is served with a small
`kaon.llm.LLMService` of its own (``examples/llm/service.py``).

The model's name in ``/v1/models`` is the deployment's (``KAON_DEPLOYMENT``).
"""

from __future__ import annotations

import os
from pathlib import Path

from kaon.core.replicas import ENV_DEPLOYMENT, ENV_MODEL_DIR
from kaon.llm.hf import HFChat
from kaon.llm.models import DecoderLM
from kaon.llm.tokenizers import Tokenizer
from kaon.train.checkpoint import CARD_FILE

__all__ = ["ModelDirLLM", "describe_folder"]

HF_CONFIG = "config.json"


def describe_folder(folder: Path) -> str:
    """What a model folder holds: ``"hf"`` (a Hugging Face causal LM), ``"kaon.train"``
    (a checkpoint folder of a job) or ``"unknown"``."""
    if (folder / HF_CONFIG).is_file():
        return "hf"
    if (folder / CARD_FILE).is_file() or any(folder.glob(f"*/{CARD_FILE}")):
        return "kaon.train"
    return "unknown"


class ModelDirLLM(HFChat):
    """A ready `LLMService` over ``$KAON_MODEL_DIR``."""

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        path = os.environ.get(ENV_MODEL_DIR)
        if not path:
            raise ValueError(f"{ENV_MODEL_DIR} is not set: deploy with --model or --hf-path")
        kind = describe_folder(Path(path))
        if kind == "kaon.train":
            raise ValueError(
                "this model is a kaon.train checkpoint, which holds no tokenizer; serve it "
                "with an LLMService of your own (see examples/llm/service.py), or register "
                "a Hugging Face folder (save_pretrained) instead"
            )
        if kind != "hf":
            raise ValueError(f"{path} holds no {HF_CONFIG}: not a Hugging Face model folder")
        self.hf_path = path
        loaded = super().load()  # names the model after the folder: a digest here
        if type(self).model_name == HFChat.model_name:
            self.model_name = os.environ.get(ENV_DEPLOYMENT) or Path(path).name
        return loaded
