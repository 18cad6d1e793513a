"""A language model trained with kaon.train, served with one command: examples/llm trains a
small character transformer for a few steps as a Kaon job (saving its alphabet beside the
checkpoints), ``kaon deploy create chat --llm --from-job JOB`` registers and deploys it
with the ready-made service, and the ``openai`` client streams a chat through the gateway.
The text must be the model's own: the stream equals the whole answer, and a greedy
completion equals the trained network's own decoding of the downloaded checkpoint."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway
from tests.models.test_e2e import cli

torch = pytest.importorskip("torch")
pytest.importorskip("openai")
EXAMPLE = Path(__file__).parents[2] / "examples" / "llm"
PROMPT = "Permission is"


def _greedy(checkpoints: Path, prompt: str, tokens: int) -> str:
    """The network's own greedy continuation: its full `forward` over the text so far,
    the most likely next character each time (no cache, no engine)."""
    from kaon.llm.ready import tokenizer_from
    from kaon.train.predict import load_model, read_model_card
    from kaon.train.tokenizer import read_tokenizer

    spec = importlib.util.spec_from_file_location("llm_example_model", EXAMPLE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    saved = read_tokenizer(checkpoints)
    assert saved is not None and saved["kind"] == "char"
    tokenizer = tokenizer_from(saved)
    kwargs = read_model_card(checkpoints)["factory_kwargs"]
    model = load_model(checkpoints, module.CharTransformer(**kwargs))
    ids = start = tokenizer.encode(prompt)
    with torch.no_grad():
        for _ in range(tokens):
            ids = [*ids, int(model(torch.tensor([ids]))[0, -1].argmax())]
    return tokenizer.decode(ids[len(start) :])


@pytest.mark.e2e
def test_a_kaon_train_job_is_served_and_streamed_with_one_command(
    sqlite_server: RunningServer, kaon: CliRunner, tmp_path: Path
) -> None:
    import openai

    client = sqlite_server.client()
    job = client.jobs.submit(
        ["python", "train.py", "--epochs", "1", "--chars", "4000", "--block", "64"],
        workdir=EXAMPLE,
        cpu=1,
    )
    done = client.jobs.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id)

    created = cli(kaon, "deploy", "create", "chat", "--llm", "--from-job", job.id,
                  "--cpu", "1", "--timeout", "180")  # fmt: skip
    assert isinstance(created, dict)
    assert created["spec"]["model"] == "chat:1"
    assert created["spec"]["service"] == "kaon.llm.ready:ModelDirLLM"
    assert created["spec"]["snapshot"] == done.spec.snapshot  # the replica runs the job's code
    token = client.deployments.create_token("chat").token
    gateway = Gateway(sqlite_server)
    try:
        base = f"{gateway.url}/chat/v1"
        deadline = time.monotonic() + 15
        while httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {token}"}).is_error:
            assert time.monotonic() < deadline, "the gateway never routed to the replica"
            time.sleep(0.1)
        llm: Any = openai.OpenAI(base_url=base, api_key=token, max_retries=0)  # untyped calls
        assert [m.id for m in llm.models.list()] == ["chat"]

        kw: dict[str, Any] = {"model": "chat", "max_tokens": 24, "temperature": 0}
        messages = [{"role": "user", "content": PROMPT}]
        whole = llm.chat.completions.create(messages=messages, **kw)
        stream = llm.chat.completions.create(messages=messages, stream=True, **kw)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len([p for p in pieces if p]) > 1  # it streamed, piece by piece
        assert "".join(pieces) == whole.choices[0].message.content
        assert whole.usage is not None and whole.usage.completion_tokens == 24

        sampled = {"model": "chat", "max_tokens": 24, "temperature": 1.0, "seed": 7}
        again = llm.chat.completions.create(messages=messages, stream=True, **sampled)
        text = "".join(c.choices[0].delta.content or "" for c in again if c.choices)
        same = llm.chat.completions.create(messages=messages, **sampled)
        assert text == same.choices[0].message.content

        completion = llm.completions.create(prompt=PROMPT, **kw)
        client.artifacts.download("chat:1", tmp_path / "model")
        assert completion.choices[0].text == _greedy(tmp_path / "model", PROMPT, 24)

        # the registered version serves the same way, in the job's code
        again_created = cli(kaon, "deploy", "create", "chat2", "--llm", "--model", "chat:1",
                            "--cpu", "0.5", "--timeout", "180")  # fmt: skip
        assert isinstance(again_created, dict)
        assert again_created["spec"]["snapshot"] == done.spec.snapshot
        token2 = client.deployments.create_token("chat2").token
        base2 = f"{gateway.url}/chat2/v1"
        deadline = time.monotonic() + 15
        while httpx.get(f"{base2}/models", headers={"Authorization": f"Bearer {token2}"}).is_error:
            assert time.monotonic() < deadline, "the gateway never routed to chat2"
            time.sleep(0.1)
        llm2: Any = openai.OpenAI(base_url=base2, api_key=token2, max_retries=0)
        kw2 = {**kw, "model": "chat2"}
        assert (
            llm2.completions.create(prompt=PROMPT, **kw2).choices[0].text
            == completion.choices[0].text
        )
    finally:
        gateway.close()


def test_the_tokenizer_file_round_trips_and_bad_ones_name_the_field(tmp_path: Path) -> None:
    from kaon.llm.ready import tokenizer_from
    from kaon.train import TrainConfig, save_byte_tokenizer, save_char_tokenizer
    from kaon.train.tokenizer import TOKENIZER_FILE, read_tokenizer

    config = TrainConfig(loss="mse", optimizer="sgd", lr=0.1, batch_size=1, epochs=1,
                         output_dir=str(tmp_path / "run"))  # fmt: skip
    assert read_tokenizer(tmp_path / "run" / "checkpoints") is None
    written = save_char_tokenizer(config, "ab\n", eos="\n")
    assert written == tmp_path / "run" / "checkpoints" / TOKENIZER_FILE
    saved = read_tokenizer(written.parent)
    assert saved is not None
    tokenizer = tokenizer_from(saved)
    assert tokenizer.encode("ba\nz") == [1, 0, 2] and tokenizer.eos_id == 2
    save_byte_tokenizer(tmp_path / "bytes", eos_id=0)
    saved = read_tokenizer(tmp_path / "bytes")
    assert saved is not None and tokenizer_from(saved).vocab_size == 256
    with pytest.raises(ValueError, match="alphabet has a character twice"):
        save_char_tokenizer(tmp_path, "aa")
    (tmp_path / TOKENIZER_FILE).write_text('{"kind": "bpe"}')
    with pytest.raises(ValueError, match="kind must be one of char, byte"):
        read_tokenizer(tmp_path)


def test_a_checkpoint_folder_without_its_tokenizer_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaon.core.replicas import ENV_MODEL_DIR
    from kaon.llm.ready import ModelDirLLM
    from kaon.train.checkpoint import CARD_FILE

    (tmp_path / "step-000000001").mkdir()
    (tmp_path / "step-000000001" / CARD_FILE).write_text("{}")
    monkeypatch.setenv(ENV_MODEL_DIR, str(tmp_path))
    with pytest.raises(ValueError, match="holds no kaon_tokenizer.json"):
        ModelDirLLM().load()
    monkeypatch.setenv(ENV_MODEL_DIR, str(tmp_path / "step-000000001" / "nothing"))
    with pytest.raises(ValueError, match="holds neither config.json"):
        ModelDirLLM().load()
