"""The character model behind OpenAI's API: the whole service a user writes.

    kaon serve examples/llm --service service:CharChat                 # one replica, locally
    kaon deploy create chat --path examples/llm --service service:CharChat

``KAON_LLM_CHECKPOINTS`` points elsewhere than ./out/checkpoints (a job's checkpoint folder).
"""

import os
from collections.abc import Sequence

from model import CharTransformer

from kaon.llm import CharTokenizer, DecoderLM, LLMService, Tokenizer, from_checkpoint
from kaon.llm.protocol import ChatMessage
from kaon.train.predict import read_model_card
from kaon.train.tokenizer import read_tokenizer


class CharChat(LLMService):
    model_name = "char-lm"
    slots = 32  # sequences decoded together

    def load(self) -> tuple[DecoderLM, Tokenizer]:
        checkpoints = os.environ.get("KAON_LLM_CHECKPOINTS", "out/checkpoints")
        model = CharTransformer(**read_model_card(checkpoints)["factory_kwargs"])
        saved = read_tokenizer(checkpoints)  # the alphabet train.py saved
        if saved is None or saved["kind"] != "char":
            raise ValueError(f"{checkpoints} holds no character tokenizer: run train.py")
        tokenizer = CharTokenizer(saved["alphabet"])
        return from_checkpoint(checkpoints, model, slots=self.slots), tokenizer

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """A character model knows no roles: it continues the last message's text."""
        return messages[-1].text()
