"""From a `kaon.train` checkpoint to the engine: the weights the job trained are served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from kaon.llm import Engine, SamplingParams, from_checkpoint
from kaon.train import TrainConfig, Trainer
from tests.llm.models import ALPHABET, char_model


def test_a_trained_checkpoint_serves_its_own_weights(tmp_path: Path) -> None:
    trained = char_model(seed=1, block=32)
    tokens = torch.randint(len(ALPHABET), (16, 33), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    config = TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=1e-2, batch_size=8, epochs=1,
        output_dir=str(tmp_path), tensorboard=False,
    )  # fmt: skip
    Trainer(trained, data, config=config).fit()

    fresh = char_model(seed=2, block=32)  # other weights until the checkpoint is loaded
    decoder = from_checkpoint(tmp_path / "checkpoints", fresh, slots=2)
    for name, value in trained.state_dict().items():
        assert torch.equal(decoder.model.state_dict()[name], value), name

    async def generate() -> list[int]:
        engine = Engine(decoder)
        engine.start()
        try:
            gen = engine.submit([1, 2, 3], SamplingParams(max_tokens=8, temperature=0.0))
            return [t.id async for t in gen.tokens()]
        finally:
            engine.stop()

    expected, idx = [], [1, 2, 3]
    with torch.no_grad():
        for _ in range(8):
            idx.append(int(torch.argmax(trained.eval()(torch.tensor([idx]))[0, -1])))
            expected.append(idx[-1])
    assert asyncio.run(generate()) == expected
