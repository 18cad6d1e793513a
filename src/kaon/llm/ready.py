"""`ModelDirLLM`: the LLM service ``kaon deploy create NAME --llm`` runs, with no code of
the user's: it serves whatever model folder the replica is given in ``KAON_MODEL_DIR``
(a registered model version, materialised by the control plane).

It loads two kinds of folder:

- a Hugging Face causal LM, as ``save_pretrained`` writes it (``config.json``, the weights
  and the tokenizer's files), through `kaon.llm.hf`;
- a `kaon.train` job's checkpoint folder whose training script saved its tokenizer
  (``kaon.train.save_char_tokenizer`` / ``save_byte_tokenizer``: ``kaon_tokenizer.json``).
  The network is rebuilt from the newest checkpoint's model card (its factory,
  ``module:callable``, and kwargs), imported from the job's code, which a deployment of
  a job's model runs in. A checkpoint folder without the tokenizer file is refused with
  the reason, since text could not be turned into the model's tokens.

The model's name in ``/v1/models`` is the deployment's (``KAON_DEPLOYMENT``).

With ``KAON_LLM_ENGINE=vllm`` in the replica's environment (``--env``), a Hugging Face
folder is decoded by vLLM instead of Kaon's engine, behind the same API
(`kaon.llm.vllm_engine`; ``pip install 'kaon[vllm]'`` and a CUDA GPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kaon.core.replicas import ENV_DEPLOYMENT, ENV_MODEL_DIR
from kaon.llm.hf import HFChat
from kaon.llm.loading import from_checkpoint
from kaon.llm.models import DecoderLM
from kaon.llm.protocol import ChatMessage
from kaon.llm.service import LLMService
from kaon.llm.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer
from kaon.llm.vllm_engine import ENV_ENGINE, engine_choice, serve_with_vllm
from kaon.train.checkpoint import CARD_FILE
from kaon.train.tokenizer import TOKENIZER_FILE, read_tokenizer

__all__ = ["ModelDirLLM", "describe_folder", "tokenizer_from"]

HF_CONFIG = "config.json"


def describe_folder(folder: Path) -> str:
    """What a model folder holds: ``"hf"`` (a Hugging Face causal LM), ``"kaon.train"``
    (a checkpoint folder of a job) or ``"unknown"``."""
    if (folder / HF_CONFIG).is_file():
        return "hf"
    if (folder / CARD_FILE).is_file() or any(folder.glob(f"*/{CARD_FILE}")):
        return "kaon.train"
    return "unknown"


def tokenizer_from(spec: dict[str, Any]) -> Tokenizer:
    """The tokenizer a checked ``kaon_tokenizer.json`` describes."""
    if spec["kind"] == "char":
        return CharTokenizer(spec["alphabet"], eos=spec.get("eos"))
    return ByteTokenizer(eos_id=spec.get("eos_id"))


def _model_dir() -> str:
    path = os.environ.get(ENV_MODEL_DIR)
    if not path:
        raise ValueError(f"{ENV_MODEL_DIR} is not set: deploy with --model or --hf-path")
    return path


class ModelDirLLM(HFChat):
    """A ready `LLMService` over ``$KAON_MODEL_DIR``."""

    _kaon_train = False  # set by load: chats then use LLMService's plain template

    def setup(self) -> None:
        if engine_choice() == "vllm":
            self._setup_vllm()
        else:
            super().setup()

    def _setup_vllm(self) -> None:
        path = _model_dir()
        if describe_folder(Path(path)) != "hf":
            raise ValueError(
                f"{ENV_ENGINE}=vllm serves Hugging Face folders ({HF_CONFIG}); {path} is not "
                f"one: unset {ENV_ENGINE} to serve it with Kaon's engine"
            )
        self.hf_tokenizer = serve_with_vllm(self, path)
        self._name_after(path)

    def _name_after(self, path: str) -> None:
        if type(self).model_name in (HFChat.model_name, LLMService.model_name):
            self.model_name = os.environ.get(ENV_DEPLOYMENT) or Path(path).name

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        path = _model_dir()
        kind = describe_folder(Path(path))
        if kind == "kaon.train":
            loaded = self._load_kaon_train(Path(path))
        elif kind == "hf":
            self.hf_path = path
            loaded = super().load()  # names the model after the folder: a digest here
        else:
            raise ValueError(
                f"{path} holds neither {HF_CONFIG} (a Hugging Face model) nor {CARD_FILE} "
                "(a kaon.train checkpoint)"
            )
        self._name_after(path)
        return loaded

    def _load_kaon_train(self, folder: Path) -> tuple[DecoderLM, Tokenizer]:
        spec = read_tokenizer(folder)
        if spec is None:
            raise ValueError(
                f"this kaon.train checkpoint folder holds no {TOKENIZER_FILE}: have the "
                "training script save its tokenizer (kaon.train.save_char_tokenizer or "
                "save_byte_tokenizer, as examples/llm/train.py does) and train again, or "
                "serve it with an LLMService of your own"
            )
        tokenizer = tokenizer_from(spec)
        try:
            model = from_checkpoint(folder, slots=self.slots)
        except ImportError as e:
            raise ValueError(
                f"the model card's factory could not be imported ({e}): deploy the job's "
                "model (--from-job, or --model of a version registered from the job) so "
                "the replica runs in the job's code"
            ) from e
        if tokenizer.vocab_size > model.vocab:
            raise ValueError(
                f"{TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model only "
                f"{model.vocab}: it is not this model's tokenizer"
            )
        self._kaon_train = True
        return model, tokenizer

    def chat_prompt(self, messages: list[ChatMessage]) -> str:
        if self._kaon_train:
            return LLMService.chat_prompt(self, messages)
        return super().chat_prompt(messages)
