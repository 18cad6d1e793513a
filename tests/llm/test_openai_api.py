"""OpenAI's API on an LLM deployment behind the gateway, called with the official client.

Real processes on loopback: the replica (``python -m kaon.serving.runtime`` serving an
`LLMService`), the gateway in front of it with a deployment token, and ``openai.OpenAI``
pointed at ``GATEWAY/DEPLOYMENT/v1``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.test_gateway import AUTH, TOKEN, gateway, route
from tests.serving.helpers import free_port, wait_ready

HERE = Path(__file__).resolve().parent
LIMIT_S = 30.0


@contextlib.contextmanager
def llm_replica(service: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service", service,
           "--path", str(HERE), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=LIMIT_S)
        yield url
    finally:
        proc.kill()
        proc.communicate(timeout=10)


@contextlib.contextmanager
def deployment(service: str) -> Iterator[tuple[openai.OpenAI, str]]:
    """(client, the deployment's base URL through the gateway)."""
    with llm_replica(service) as url, gateway(route("chat", [url])) as gw:
        base = f"{gw.url}/chat"
        client = openai.OpenAI(
            base_url=f"{base}/v1", api_key=TOKEN, max_retries=0, timeout=LIMIT_S
        )
        yield client, base


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[openai.OpenAI, str]]:
    with deployment("services:TinyChat") as pair:
        yield pair


def engine(base: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{base}/v1/engine", headers=AUTH).json()
    return stats


class TestOpenAIClient:
    def test_models(self, tiny: tuple[openai.OpenAI, str]) -> None:
        client, _ = tiny
        assert [m.id for m in client.models.list()] == ["tiny-char"]

    def test_chat_streamed_and_not_agree(self, tiny: tuple[openai.OpenAI, str]) -> None:
        client, _ = tiny
        messages = [{"role": "user", "content": "hello there"}]
        whole = client.chat.completions.create(
            model="tiny-char", messages=messages, max_tokens=20, temperature=0
        )
        stream = client.chat.completions.create(
            model="tiny-char", messages=messages, max_tokens=20, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert whole.choices[0].message.content == text
        assert whole.choices[0].finish_reason == "length"
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
        assert whole.usage is not None and whole.usage.completion_tokens == 20
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 20
        assert usage.prompt_tokens == whole.usage.prompt_tokens > 0

    def test_completions_n_seed_stop(self, tiny: tuple[openai.OpenAI, str]) -> None:
        client, _ = tiny
        kw = {"model": "tiny-char", "prompt": "the cat", "max_tokens": 30, "temperature": 1.0}
        two = client.completions.create(n=2, seed=3, **kw)
        again = client.completions.create(n=2, seed=3, **kw)
        assert [c.text for c in two.choices] == [c.text for c in again.choices]
        assert two.choices[0].text != two.choices[1].text
        assert two.usage is not None and two.usage.completion_tokens == 60
        text = two.choices[0].text
        stop = text[5:7]  # a stop string that is in the text: the choice ends before it
        cut = client.completions.create(n=1, seed=3, stop=[stop], **kw)
        assert cut.choices[0].text == text[: text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
        streamed = client.completions.create(n=1, seed=3, stop=stop, stream=True, **kw)
        assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text

    @pytest.mark.parametrize(
        ("kwargs", "param"),
        [
            ({"max_tokens": 10_000}, "max_tokens"),
            ({"n": 99}, "n"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"temperature": 5}, "temperature"),
            ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
            ({"messages": [{"role": "user", "content": "x" * 100}]}, "messages"),
            ({"extra_body": {"best_of": 3}}, "best_of"),
        ],
    )
    def test_bad_input_is_a_400_naming_the_field(
        self, tiny: tuple[openai.OpenAI, str], kwargs: dict[str, object], param: str
    ) -> None:
        client, _ = tiny
        args: dict[str, object] = {
            "model": "tiny-char", "messages": [{"role": "user", "content": "hi"}], **kwargs
        }  # fmt: skip
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**args)
        assert caught.value.param == param
        assert caught.value.body["type"] == "invalid_request_error"

    def test_an_unknown_model_is_a_404(self, tiny: tuple[openai.OpenAI, str]) -> None:
        client, _ = tiny
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model="gpt-9", prompt="hi")
        assert caught.value.code == "model_not_found"

    def test_malformed_json_is_a_400(self, tiny: tuple[openai.OpenAI, str]) -> None:
        _, base = tiny
        r = httpx.post(f"{base}/v1/chat/completions", content=b"{nope", headers=AUTH)
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"


class TestSlots:
    def test_disconnect_frees_the_slot_and_overload_is_429(self) -> None:
        with deployment("services:SlowChat") as (client, base), ThreadPoolExecutor(1) as pool:
            kw = {"model": "tiny-char", "prompt": "hi", "max_tokens": 200, "temperature": 0}
            first = client.completions.create(stream=True, **kw)
            pieces = iter(first)
            next(pieces)
            next(pieces)
            assert engine(base)["running"] == 1
            queued = pool.submit(lambda: client.completions.create(**{**kw, "max_tokens": 3}))
            _until(lambda: engine(base)["queued"] == 1)
            with pytest.raises(openai.RateLimitError) as caught:
                client.completions.create(**kw)
            assert int(caught.value.response.headers["retry-after"]) >= 1
            first.close()  # the client leaves mid-stream
            assert queued.result(timeout=LIMIT_S).choices[0].finish_reason == "length"
            _until(lambda: engine(base)["free_slots"] == 1 and engine(base)["running"] == 0)
            assert engine(base)["tokens"] < 200  # the first one stopped early

            # a client that gives up on a non-streamed completion frees its slot too
            before = engine(base)["tokens"]
            body = {**kw, "max_tokens": 200}  # about 4 s of decoding
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base}/v1/completions", json=body, headers=AUTH, timeout=1.0)
            _until(lambda: engine(base)["running"] == 0)
            assert engine(base)["tokens"] - before < 200


def _until(check: object) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)
