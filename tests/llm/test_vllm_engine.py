"""vLLM as the engine behind Kaon's OpenAI API, on a machine without a GPU.

vLLM itself cannot run here (it needs CUDA), so ``tests/llm/standin/vllm`` stands in for
it: exactly the part of vLLM's API that ``kaon.llm.vllm_engine`` calls, with vLLM's
behaviour (see its docstring). Everything else is real: the replica process serving
``kaon.llm.ready:ModelDirLLM`` with ``KAON_LLM_ENGINE=vllm``, the gateway in front of it,
and the official ``openai`` client. The stand-in writes a JSON line per request it adds,
finishes or aborts, which is how these tests see what reached "vLLM".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from kaon.llm.engine import SamplingParams
from kaon.llm.vllm_engine import (
    INSTALL_HINT,
    VLLMEngine,
    engine_choice,
    finish_reason,
    import_vllm,
    sampling_kwargs,
    vllm_args,
)
from tests.gateway.test_gateway import AUTH, TOKEN, gateway, route
from tests.serving.helpers import free_port, wait_ready

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

STANDIN = Path(__file__).resolve().parent / "standin"
LIMIT_S = 60.0
NAME = "tiny-vllm"
TEXT = ["the quick brown fox jumps over the lazy dog", "a journey of a thousand miles"] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder as vLLM reads it: ``config.json`` and the tokenizer (the
    stand-in needs no weights)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, special_tokens=["<eos>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<eos>"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@dataclass
class Deployment:
    client: openai.OpenAI
    base: str  # the deployment's URL through the gateway
    events: Path  # the stand-in's log

    def log(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def engine(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{self.base}/v1/engine", headers=AUTH).json()
        return stats


@contextlib.contextmanager
def replica(
    folder: Path, service: str, env: dict[str, str], path: Path | None = STANDIN
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service", service,
           "--port", str(port)]  # fmt: skip
    if path is not None:
        cmd += ["--path", str(path)]
    full = {**os.environ, "KAON_MODEL_DIR": str(folder), "KAON_DEPLOYMENT": NAME,
            "KAON_LLM_ENGINE": "vllm", **env}  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.communicate(timeout=10)


@contextlib.contextmanager
def deployment(
    folder: Path, tmp: Path, service: str = "kaon.llm.ready:ModelDirLLM", **env: str
) -> Iterator[Deployment]:
    events = tmp / "vllm-events.jsonl"
    env = {"STANDIN_VLLM_EVENTS": str(events), **env}
    with replica(folder, service, env) as (_, url), gateway(route("chat", [url])) as gw:
        wait_ready(url, timeout=LIMIT_S)
        base = f"{gw.url}/chat"
        client = openai.OpenAI(
            base_url=f"{base}/v1", api_key=TOKEN, max_retries=0, timeout=LIMIT_S
        )
        yield Deployment(client, base, events)


@pytest.fixture(scope="module")
def served(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(folder, tmp_path_factory.mktemp("served")) as dep:
        yield dep


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stand-in imported as ``vllm`` in this process, for this test only."""
    monkeypatch.syspath_prepend(str(STANDIN))
    yield import_vllm()
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


class TestThroughTheGateway:
    def test_models_and_chat_streamed_and_not(self, served: Deployment) -> None:
        assert [m.id for m in served.client.models.list()] == [NAME]
        kw: dict[str, Any] = {
            "model": NAME, "messages": [{"role": "user", "content": "the quick fox"}],
            "max_tokens": 12, "temperature": 0,
        }  # fmt: skip
        whole = served.client.chat.completions.create(**kw)
        chunks = list(
            served.client.chat.completions.create(
                stream=True, stream_options={"include_usage": True}, **kw
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert whole.choices[0].message.content == text != ""
        assert whole.choices[0].finish_reason == "length"
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
        usage = chunks[-1].usage
        assert whole.usage is not None and usage is not None
        assert whole.usage.completion_tokens == usage.completion_tokens == 12
        adds = [e for e in served.log() if e["event"] == "add"][-2:]
        # what vLLM was given is what Kaon counted, and greedy maps to temperature 0
        assert [e["prompt_tokens"] for e in adds] == [whole.usage.prompt_tokens] * 2
        assert [(e["max_tokens"], e["temperature"]) for e in adds] == [(12, 0)] * 2
        for add in adds:  # each ran to its end in vLLM, and nothing was aborted after it
            events = [e["event"] for e in _events_of(served, add["request_id"])]
            assert events == ["add", "finish"]

    def test_completions_n_seed_and_stop(self, served: Deployment) -> None:
        kw: dict[str, Any] = {"model": NAME, "prompt": "a journey", "max_tokens": 10,
                              "temperature": 1.0}  # fmt: skip
        two = served.client.completions.create(n=2, seed=3, **kw)
        seeds = [e["seed"] for e in served.log() if e["event"] == "add"][-2:]
        again = served.client.completions.create(n=2, seed=3, **kw)
        assert sorted(seeds) == [3, 4]  # one vLLM request per choice, seed + index
        assert [c.text for c in two.choices] == [c.text for c in again.choices]
        assert two.choices[0].text != two.choices[1].text
        assert two.usage is not None and two.usage.completion_tokens == 20
        text = two.choices[0].text
        stop = text[4:6]  # a stop string in the text: the choice ends before it
        cut = served.client.completions.create(n=1, seed=3, stop=[stop], **kw)
        assert cut.choices[0].text == text[: text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
        streamed = served.client.completions.create(n=1, seed=3, stop=stop, stream=True, **kw)
        assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text

    def test_engine_stats_after_work(self, served: Deployment) -> None:
        served.client.completions.create(model=NAME, prompt="the", max_tokens=5)
        stats = served.engine()
        assert stats["running"] == 0 and stats["queued"] == 0
        assert stats["free_slots"] == 256  # vLLM's max_num_seqs here
        assert stats["tokens"] >= 5 and stats["steps"] >= 1


class TestAbortAndAdmission:
    def test_disconnect_aborts_in_vllm_and_overload_is_429(
        self, folder: Path, tmp_path: Path
    ) -> None:
        env = {"STANDIN_VLLM_STEP_S": "0.02", "KAON_VLLM_ARGS": '{"max_num_seqs": 1}'}
        with (
            deployment(folder, tmp_path, "vllm_services:OneInQueue", **env) as dep,
            ThreadPoolExecutor(1) as pool,
        ):
            kw: dict[str, Any] = {"model": NAME, "prompt": "the", "temperature": 0}
            first = dep.client.completions.create(stream=True, max_tokens=200, **kw)
            pieces = iter(first)
            next(pieces)
            next(pieces)
            assert dep.engine()["running"] == 1
            assert dep.engine()["free_slots"] == 0
            queued = pool.submit(lambda: dep.client.completions.create(max_tokens=3, **kw))
            _until(lambda: dep.engine()["queued"] == 1)  # vLLM holds it: one at a time
            with pytest.raises(openai.RateLimitError) as caught:
                dep.client.completions.create(max_tokens=3, **kw)
            assert int(caught.value.response.headers["retry-after"]) >= 1
            first.close()  # the client leaves mid-stream
            assert queued.result(timeout=LIMIT_S).choices[0].finish_reason == "length"
            aborted = _request_of(dep, 200)
            _until(lambda: any(e["event"] == "abort" for e in _events_of(dep, aborted)))
            abort = [e for e in _events_of(dep, aborted) if e["event"] == "abort"][0]
            assert abort["known"] and abort["tokens"] < 200
            _until(lambda: dep.engine()["running"] == 0 and dep.engine()["queued"] == 0)

            # a client that gives up on a non-streamed completion aborts it too
            with pytest.raises(httpx.ReadTimeout):
                body = {**kw, "max_tokens": 150}
                httpx.post(f"{dep.base}/v1/completions", json=body, headers=AUTH, timeout=1.0)
            gone = _request_of(dep, 150)
            _until(lambda: any(e["event"] == "abort" for e in _events_of(dep, gone)))

            # a stop string found by Kaon ends the vLLM request at once
            text = dep.client.completions.create(max_tokens=8, **kw).choices[0].text
            stop = text[3:5]
            cut = dep.client.completions.create(max_tokens=120, stop=stop, **kw)
            assert cut.choices[0].finish_reason == "stop"
            stopped = _request_of(dep, 120)
            _until(lambda: any(e["event"] == "abort" for e in _events_of(dep, stopped)))


def _request_of(dep: Deployment, max_tokens: int) -> str:
    adds = [e for e in dep.log() if e["event"] == "add" and e["max_tokens"] == max_tokens]
    assert len(adds) == 1
    return str(adds[0]["request_id"])


def _events_of(dep: Deployment, request_id: str) -> list[dict[str, Any]]:
    return [e for e in dep.log() if e["request_id"] == request_id]


class TestAdapter:
    def test_tokens_are_vllms_tokens(self, folder: Path, standin: Any) -> None:
        """The adapter's stream is vLLM's own output for the same request."""

        async def run() -> tuple[list[int], list[int], str | None]:
            engine = VLLMEngine.build(str(folder), max_queue=4)
            prompt = [5, 9, 17]
            params = SamplingParams(max_tokens=7, temperature=0.0)
            gen = engine.submit(prompt, params)
            tokens = [t async for t in gen.tokens()]
            sp = standin.SamplingParams(max_tokens=7, temperature=0.0)
            outs = [o async for o in engine.client.generate({"prompt_token_ids": prompt}, sp, "x")]
            engine.shutdown()
            return [t.id for t in tokens], list(outs[-1].outputs[0].token_ids), tokens[-1].finish

        ours, theirs, finish = asyncio.run(run())
        assert ours == theirs and len(ours) == 7
        assert finish == "length"

    def test_cancel_before_the_first_token_frees_the_queue(
        self, folder: Path, standin: Any
    ) -> None:
        async def run() -> tuple[int, int]:
            engine = VLLMEngine.build(str(folder), max_queue=1)
            gen = engine.submit([5, 9], SamplingParams(max_tokens=3))
            full = engine.stats().queued
            gen.cancel()
            engine.shutdown()
            return full, engine.stats().queued

        assert asyncio.run(run()) == (1, 0)

    def test_sampling_params_map_to_vllms(self, standin: Any) -> None:
        params = SamplingParams(max_tokens=9, temperature=0.5, top_p=0.9, seed=7,
                                stop_ids=frozenset({3}))  # fmt: skip
        mapped = standin.SamplingParams(**sampling_kwargs(params))  # vLLM's names
        assert (mapped.max_tokens, mapped.temperature, mapped.top_p, mapped.seed) == (
            9, 0.5, 0.9, 7,
        )  # fmt: skip
        assert mapped.stop_token_ids == [3] and mapped.n == 1 and not mapped.detokenize
        assert finish_reason("stop") == "stop" and finish_reason("length") == "length"
        with pytest.raises(RuntimeError, match="abort"):
            finish_reason("abort")


class TestChoosingTheEngine:
    def test_without_vllm_setup_fails_with_the_install_line(self, folder: Path) -> None:
        with replica(folder, "kaon.llm.ready:ModelDirLLM", {}, path=None) as (proc, _):
            _, err = proc.communicate(timeout=LIMIT_S)
        assert proc.returncode == 1
        assert INSTALL_HINT in err

    def test_missing_vllm_in_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "vllm", None)  # an import of it fails
        with pytest.raises(RuntimeError, match=r"pip install 'kaon\[vllm\]'"):
            import_vllm()

    def test_engine_names(self) -> None:
        assert engine_choice({}) == "kaon"
        assert engine_choice({"KAON_LLM_ENGINE": "vLLM"}) == "vllm"
        with pytest.raises(ValueError, match="one of kaon, vllm"):
            engine_choice({"KAON_LLM_ENGINE": "vlm"})

    def test_engine_args(self) -> None:
        args = vllm_args("/m", '{"max_num_seqs": 8, "model": "elsewhere"}')
        assert args == {"max_num_seqs": 8, "model": "/m", "tokenizer": "/m"}
        with pytest.raises(ValueError, match="JSON object"):
            vllm_args("/m", "[1]")

    def test_vllm_serves_hugging_face_folders_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from kaon.llm.ready import ModelDirLLM

        monkeypatch.setenv("KAON_MODEL_DIR", str(tmp_path))
        monkeypatch.setenv("KAON_LLM_ENGINE", "vllm")
        with pytest.raises(ValueError, match="serves Hugging Face folders"):
            ModelDirLLM().setup()
