"""Serving language models: continuous batching, a KV cache, OpenAI's API.

- `Engine` (`kaon.llm.engine`): the decoding loop that requests join and leave each step.
- `CachedDecoder` (`kaon.llm.models`): a KV-cached view of a model trained with
  `kaon.train` (the GPT and character models of ``examples/``); `from_checkpoint` loads one.
- `LLMService` (`kaon.llm.service`): a `kaon.Service` answering ``/v1/models``,
  ``/v1/completions`` and ``/v1/chat/completions``, streamed or not.
- `kaon.llm.hf`: Hugging Face ``transformers`` models from a local folder (``HFChat``).
- `kaon.llm.embeddings`: ``/v1/embeddings`` for a ``sentence-transformers`` folder.

Needs PyTorch (``kaon[train]``); nothing here is imported by ``import kaon``.
"""

from kaon.llm.engine import Engine, QueueFullError, SamplingParams, Token
from kaon.llm.loading import from_checkpoint
from kaon.llm.models import CachedDecoder, DecoderLM
from kaon.llm.service import LLMService
from kaon.llm.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer

__all__ = [
    "ByteTokenizer",
    "CachedDecoder",
    "CharTokenizer",
    "DecoderLM",
    "Engine",
    "LLMService",
    "QueueFullError",
    "SamplingParams",
    "Token",
    "Tokenizer",
    "from_checkpoint",
]
