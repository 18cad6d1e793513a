"""Hugging Face causal LMs from a local folder: a tiny random Llama and a byte-level BPE
tokenizer, both built here from a config (nothing is downloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
import torch

from kaon.llm import Engine, SamplingParams, Token
from kaon.llm.hf import from_hf_folder
from tests.gateway.test_gateway import TOKEN, gateway, route
from tests.serving.helpers import free_port, wait_ready

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber",  # characters of two bytes
] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, special_tokens=["<eos>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_batched_decoding_matches_generate(folder: Path) -> None:
    decoder, tokenizer = from_hf_folder(folder, slots=4)
    prompts = [tokenizer.encode(t) for t in ("the quick", "a journey of a thousand", "caf")]
    eos = frozenset({tokenizer.eos_id}) if tokenizer.eos_id is not None else frozenset()

    async def run() -> list[list[int]]:
        engine = Engine(decoder)
        engine.start()
        try:
            params = SamplingParams(max_tokens=10, temperature=0.0, stop_ids=eos)
            gens = [engine.submit(p, params) for p in prompts]
            return list(await asyncio.gather(*(ids(g.tokens()) for g in gens)))
        finally:
            engine.stop()

    expected: list[list[int]] = []
    for p in prompts:
        out = decoder.model.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_id,
        )  # fmt: skip
        expected.append(out[0, len(p) :].tolist())
    assert asyncio.run(run()) == expected


async def ids(tokens: AsyncIterator[Token]) -> list[int]:
    return [t.id async for t in tokens]


def test_streamed_text_is_the_decoded_text(folder: Path) -> None:
    _, tokenizer = from_hf_folder(folder, slots=1)
    ids = tokenizer.encode("caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber fox")
    detok = tokenizer.detokenizer()
    pieces = [detok.step(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids)


@contextlib.contextmanager
def hf_replica(folder: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service", "kaon.llm.hf:HFChat",
           "--port", str(port)]  # fmt: skip
    env = {**os.environ, "KAON_LLM_HF_PATH": str(folder)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=60)
        yield url
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_the_openai_client_through_the_gateway(folder: Path) -> None:
    with hf_replica(folder) as url, gateway(route("hf", [url])) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/hf/v1", api_key=TOKEN, max_retries=0)
        assert [m.id for m in client.models.list()] == [folder.name]
        kw = {"model": folder.name, "prompt": "the quick", "max_tokens": 12, "temperature": 0}
        whole = client.completions.create(**kw)
        streamed = client.completions.create(stream=True, **kw)
        assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
        assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12
