"""One command serves a Hugging Face folder as an LLM: ``kaon deploy create chat --llm
--hf-path DIR`` registers the folder as a model version and deploys it with the ready-made
service, called through the gateway with the ``openai`` client, streamed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway
from tests.models.test_e2e import cli

pytest.importorskip("torch")
pytest.importorskip("transformers")
from tests.llm.test_hf import folder  # noqa: F401  (the tiny random Llama fixture)


@pytest.mark.e2e
def test_one_command_serves_a_hugging_face_folder(
    sqlite_server: RunningServer,
    kaon: CliRunner,
    folder: Path,  # noqa: F811
) -> None:
    import openai

    created = cli(kaon, "deploy", "create", "chat", "--llm", "--hf-path", str(folder),
                  "--cpu", "1", "--timeout", "180")  # fmt: skip
    assert isinstance(created, dict)
    assert created["spec"]["model"] == "chat:1"
    assert created["spec"]["service"] == "kaon.llm.ready:ModelDirLLM"
    client = sqlite_server.client()
    assert client.models.get("chat").versions[0].artifact == "chat:1"
    token = client.deployments.create_token("chat").token
    gateway = Gateway(sqlite_server)
    try:
        base = f"{gateway.url}/chat/v1"
        deadline = time.monotonic() + 15
        while httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {token}"}).is_error:
            assert time.monotonic() < deadline, "the gateway never routed to the replica"
            time.sleep(0.1)
        llm = openai.OpenAI(base_url=base, api_key=token, max_retries=0)
        assert [m.id for m in llm.models.list()] == ["chat"]
        kw = {"model": "chat", "max_tokens": 8, "temperature": 0}
        messages = [{"role": "user", "content": "the quick brown fox"}]
        whole = llm.chat.completions.create(messages=messages, **kw)  # type: ignore[call-overload]
        stream = llm.chat.completions.create(messages=messages, stream=True, **kw)  # type: ignore[call-overload]
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len(pieces) > 1
        assert "".join(pieces) == whole.choices[0].message.content
    finally:
        gateway.close()


def test_llm_flags_are_checked_before_anything_is_sent(
    kaon: CliRunner, sqlite_server: RunningServer, tmp_path: Path
) -> None:
    cases = [
        (["--hf-path", str(tmp_path)], "add --llm"),
        (["--llm"], "exactly one of --from-job, --model and --hf-path"),
        (["--llm", "--model", "m:1", "--hf-path", str(tmp_path)], "exactly one of"),
        (["--llm", "--hf-path", str(tmp_path / "missing")], "is not a folder"),
    ]
    for args, message in cases:
        result = kaon.invoke(app, ["deploy", "create", "chat", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    client = sqlite_server.client()
    assert client.models.list() == [] and client.deployments.list() == []
