"""The batching engine in-process, on the example models with random weights."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import torch

from kaon.llm.engine import Engine, QueueFullError, SamplingParams, StepInfo
from kaon.llm.models import CachedDecoder, full_forward_logits
from tests.llm.models import char_model, gpt_model
from tests.llm.services import SlowDecoder

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def reference(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with the model's own forward over the whole sequence, no cache."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(torch.argmax(full_forward_logits(model, tokens))))
    return tokens[len(prompt) :]


@pytest.fixture
def steps() -> list[StepInfo]:
    return []


@pytest.fixture(params=["gpt", "char"])
def engine(request: pytest.FixtureRequest, steps: list[StepInfo]) -> Iterator[Engine]:
    model = gpt_model() if request.param == "gpt" else char_model()
    eng = Engine(CachedDecoder(model, slots=4), max_step_tokens=64, on_step=steps.append)
    eng.start()
    yield eng
    eng.stop()


async def collect(tokens: AsyncIterator[object]) -> list[int]:
    return [t.id async for t in tokens]


class TestEngine:
    async def test_cached_batched_decoding_matches_the_full_forward(self, engine: Engine) -> None:
        prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]  # different lengths, one batch
        gens = [engine.submit(p, GREEDY) for p in prompts]
        outs = await asyncio.gather(*(collect(g.tokens()) for g in gens))
        model = engine.model.model
        assert outs == [reference(model, p, 12) for p in prompts]

    async def test_requests_join_a_running_batch(
        self, engine: Engine, steps: list[StepInfo]
    ) -> None:
        long = engine.submit([1, 2], SamplingParams(max_tokens=40, temperature=0.0))
        tokens = long.tokens()
        for _ in range(3):
            await anext(tokens)  # the long one is decoding
        short = engine.submit([3, 4], SamplingParams(max_tokens=2, temperature=0.0))
        short_out = await collect(short.tokens())
        rest = await collect(tokens)
        assert len(short_out) == 2 and len(rest) == 37
        joined = next(s.step for s in steps if 2 in s.prefilled)
        left = max(s.step for s in steps if 2 in s.decoded)
        # the short one joined while the long one decoded, and left before it ended
        assert any(1 in s.decoded for s in steps if s.step == joined)
        assert any(1 in s.decoded for s in steps if s.step > left)

    async def test_a_step_stays_within_its_token_budget(self, steps: list[StepInfo]) -> None:
        eng = Engine(
            CachedDecoder(char_model(), slots=8), max_step_tokens=12, on_step=steps.append
        )
        gens = [eng.submit(list(range(1, 9)), GREEDY) for _ in range(4)]  # 8 tokens each
        eng.start()
        try:
            await asyncio.gather(*(collect(g.tokens()) for g in gens))
        finally:
            eng.stop()
        assert all(s.prefill_tokens + len(s.decoded) <= 12 for s in steps)
        assert sum(len(s.prefilled) for s in steps) == 4
        assert max(len(s.prefilled) for s in steps) == 1  # two prompts never fit one step

    async def test_the_queue_is_bounded(self) -> None:
        eng = Engine(CachedDecoder(char_model(), slots=1), max_queue=2)  # not started
        eng.submit([1], GREEDY)
        eng.submit([1], GREEDY)
        with pytest.raises(QueueFullError) as caught:
            eng.submit([1], GREEDY)
        assert caught.value.retry_after_s >= 1

    async def test_leaving_early_frees_the_slot(self, engine: Engine) -> None:
        gen = engine.submit([1, 2, 3], SamplingParams(max_tokens=50, temperature=1.0))
        tokens = gen.tokens()
        await anext(tokens)
        assert engine.stats().free_slots == 3
        await tokens.aclose()  # what a closed stream does
        for _ in range(500):
            if engine.stats().free_slots == 4:
                break
            await asyncio.sleep(0.01)
        stats = engine.stats()
        assert (stats.free_slots, stats.running) == (4, 0)
        assert stats.tokens < 50 + 10  # it stopped well before max_tokens

    async def test_a_seed_makes_sampling_repeatable(self, engine: Engine) -> None:
        params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
        first = await collect(engine.submit([5, 6], params).tokens())
        second = await collect(engine.submit([5, 6], params).tokens())
        other = await collect(engine.submit([5, 6], SamplingParams(10, 1.0, 0.9, 8)).tokens())
        assert first == second
        assert first != other

    async def test_a_sequence_stops_at_the_context(self) -> None:
        eng = Engine(CachedDecoder(char_model(block=16), slots=2))
        eng.start()
        try:
            tokens = [t async for t in eng.submit([1] * 10, SamplingParams(100, 0.0)).tokens()]
        finally:
            eng.stop()
        # 10 prompt tokens and 6 fed back fill the 16 positions; the 7th is predicted from them
        assert len(tokens) == 7 and tokens[-1].finish == "length"

    async def test_leaving_the_queue_frees_a_place_in_it(self) -> None:
        eng = Engine(SlowDecoder(CachedDecoder(char_model(block=256), slots=1)), max_queue=2)
        eng.start()
        try:
            running = eng.submit([1], SamplingParams(max_tokens=200, temperature=0.0))
            tokens = running.tokens()
            await anext(tokens)  # it holds the only slot
            left = eng.submit([1], GREEDY)
            eng.submit([1], GREEDY)
            with pytest.raises(QueueFullError):
                eng.submit([1], GREEDY)
            left.cancel()  # the client went away while queued
            for _ in range(500):
                if eng.stats().queued == 1:
                    break
                await asyncio.sleep(0.01)
            assert eng.stats().queued == 1
            eng.submit([1], GREEDY)  # its place is free again
            await tokens.aclose()
        finally:
            eng.stop()
