"""examples/gpt, trained on a text's bytes as a Kaon job, is served with one command:
``kaon deploy create gpt --llm --from-job JOB`` rebuilds the GPT from the model card's
factory (``model:GPT``, imported from the job's code) with the byte tokenizer the job
saved, and the ``openai`` client streams through the gateway. The text is the network's
own: the stream equals the whole answer, a greedy completion equals the downloaded
checkpoint's own decoding, and the usage counts the prompt's bytes and the tokens made.

The text is the one examples/llm trains on: Python's LICENSE.txt from the standard
library (or the `argparse` source where a distribution leaves it out), so nothing is
downloaded."""

from __future__ import annotations

import argparse
import inspect
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer
from tests.conftest import kaon as kaon  # a fixture: the CLI against a SQLite server
from tests.e2e.conftest import Gateway
from tests.models.test_e2e import cli

torch = pytest.importorskip("torch")
pytest.importorskip("openai")
EXAMPLE = Path(__file__).parents[2] / "examples" / "gpt"
PROMPT = "Permission is"
TOKENS = 24  # the tiny GPT's context is 64 tokens: the chat template and these fit


def _text() -> str:
    """The path of the text examples/llm trains on (see its ``load_text``)."""
    license_file = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if license_file.is_file():
        return str(license_file)
    source = inspect.getsourcefile(argparse)
    assert source is not None
    return source


def _greedy(checkpoints: Path, prompt: str, tokens: int) -> str:
    """The network's own greedy continuation: its full `forward` over the bytes so far,
    the most likely byte each time (no cache, no engine)."""
    from kaon.llm.tokenizers import ByteTokenizer
    from kaon.train.predict import load_model, read_model_card
    from kaon.train.tokenizer import read_tokenizer
    from tests.llm.models import gpt_model

    assert read_tokenizer(checkpoints) == {"format": 1, "kind": "byte", "eos_id": None}
    card = read_model_card(checkpoints)
    assert (card["factory"], card["factory_kwargs"]) == ("model:GPT", {"name": "tiny"})
    model = load_model(checkpoints, gpt_model())  # the tiny GPT, its weights replaced
    tokenizer = ByteTokenizer()
    ids = start = tokenizer.encode(prompt)
    with torch.no_grad():
        for _ in range(tokens):
            logits = model(torch.tensor([ids]))[0, -1, : tokenizer.vocab_size]
            ids = [*ids, int(logits.argmax())]
    return tokenizer.decode(ids[len(start) :])


def _wait_routed(base: str, token: str) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {token}"}).is_error:
        assert time.monotonic() < deadline, "the gateway never routed to the replica"
        time.sleep(0.1)


def _streamed(chunks: Any) -> tuple[str, Any]:
    """The text of a stream's pieces (asserting there were several) and its usage."""
    pieces, usage = [], None
    for chunk in chunks:
        if chunk.choices:
            choice = chunk.choices[0]
            pieces.append(choice.delta.content if hasattr(choice, "delta") else choice.text)
        usage = chunk.usage or usage
    assert len([p for p in pieces if p]) > 1  # it streamed, piece by piece
    return "".join(p or "" for p in pieces), usage


@pytest.mark.e2e
def test_a_gpt_trained_on_text_as_a_job_is_served_and_streamed(
    sqlite_server: RunningServer, kaon: CliRunner, tmp_path: Path
) -> None:
    """On SQLite only, like the examples/llm test: the path to a replica does not depend
    on the database, and a job plus an LLM replica cost most of a minute."""
    import openai

    client = sqlite_server.client()
    argv = ["python", "train.py", "--config", "tiny", "--text", _text(), "--steps", "20"]
    job = client.jobs.submit(argv, workdir=EXAMPLE, cpu=1)
    done = client.jobs.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id)

    created = cli(kaon, "deploy", "create", "gpt", "--llm", "--from-job", job.id,
                  "--cpu", "1", "--timeout", "180")  # fmt: skip
    assert isinstance(created, dict)
    assert created["spec"]["model"] == "gpt:1"
    assert created["spec"]["service"] == "kaon.llm.ready:ModelDirLLM"
    assert created["spec"]["snapshot"] == done.spec.snapshot  # the replica runs the job's code
    token = client.deployments.create_token("gpt").token
    gateway = Gateway(sqlite_server)
    try:
        base = f"{gateway.url}/gpt/v1"
        _wait_routed(base, token)
        llm: Any = openai.OpenAI(base_url=base, api_key=token, max_retries=0)  # untyped calls
        assert [m.id for m in llm.models.list()] == ["gpt"]

        kw: dict[str, Any] = {"model": "gpt", "max_tokens": TOKENS, "temperature": 0}
        usage_too = {"stream_options": {"include_usage": True}}
        messages = [{"role": "user", "content": PROMPT}]
        whole = llm.chat.completions.create(messages=messages, **kw)
        stream = llm.chat.completions.create(messages=messages, stream=True, **usage_too, **kw)
        text, usage = _streamed(stream)
        assert text == whole.choices[0].message.content
        assert whole.usage.completion_tokens == TOKENS
        assert whole.usage.prompt_tokens > len(PROMPT.encode())  # the chat template's too
        assert usage.model_dump() == whole.usage.model_dump()

        completion = llm.completions.create(prompt=PROMPT, **kw)
        stream = llm.completions.create(prompt=PROMPT, stream=True, **usage_too, **kw)
        text, usage = _streamed(stream)
        assert text == completion.choices[0].text
        assert completion.usage.prompt_tokens == len(PROMPT.encode())  # one token a byte
        assert completion.usage.completion_tokens == TOKENS
        assert completion.usage.total_tokens == len(PROMPT.encode()) + TOKENS
        assert usage.model_dump() == completion.usage.model_dump()

        client.artifacts.download("gpt:1", tmp_path / "model")
        assert completion.choices[0].text == _greedy(tmp_path / "model", PROMPT, TOKENS)
    finally:
        gateway.close()
