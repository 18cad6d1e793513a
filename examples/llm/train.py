"""Train the character model for a few minutes on the CPU, into ./out/checkpoints.

    cd examples/llm && python train.py --epochs 10
    kaon job run --cpu 1 -- python train.py --epochs 1 --chars 20000   # or as a Kaon job

The checkpoints land inside this folder, so deploying the folder ships them; in a Kaon
job they go to the job's checkpoint folder. Either way the tokenizer (the alphabet) is
saved beside them, so ``kaon deploy create chat --llm --from-job JOB`` serves the job's
model with no code of its own.
"""

import argparse

import torch
from model import CharTransformer, alphabet, load_text
from torch.utils.data import Dataset

from kaon.train import TrainConfig, Trainer, save_char_tokenizer, seed_everything
from kaon.train.checkpoint import checkpoint_root


class Windows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block = tokens, block
        self.count = max(0, (len(tokens) - block - 1) // (block // 2) + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.tokens[i * self.block // 2 : i * self.block // 2 + self.block + 1]
        return window[:-1], window[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--chars", type=int, default=None, help="train on this many chars")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many")
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    seed_everything(0)
    text = load_text()[: args.chars]
    chars = alphabet(text)
    tokens = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    kwargs = {"vocab": len(chars), "block": args.block, "dim": 64, "layers": 2}
    config = TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=3e-3, batch_size=32, epochs=args.epochs,
        schedule="cosine", warmup_steps=10, clip_grad_norm=1.0, output_dir=args.out,
        tensorboard=False, max_steps=args.max_steps,
    )  # fmt: skip
    save_char_tokenizer(config, chars)  # what serving needs beside the checkpoints
    model = CharTransformer(**kwargs)
    Trainer(model, Windows(tokens, args.block), config=config, model_kwargs=kwargs).fit()
    print(f"checkpoints in {checkpoint_root(config)}")


if __name__ == "__main__":
    main()
