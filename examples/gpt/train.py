"""Train a GPT-2-style model with kaon.train: on random tokens to measure throughput, or on
a text file's bytes for a model to serve.

    python train.py --config tiny --steps 20                     # anywhere, seconds
    python train.py --config 124m --batch-size 16 --compile      # one GPU
    torchrun --nproc-per-node 8 train.py --config 1.3b ...       # or as a Kaon job
    python train.py --config tiny --text notes.txt --steps 300   # a model to serve

The tokens are random by default, so the loss only falls to log(vocab); the point is
tokens per second and MFU on real shapes, without a tokenizer or a dataset download. Such
a run keeps no checkpoints (a benchmark measures from a fresh start every time).

With ``--text FILE`` it trains on the file's UTF-8 bytes (tokens 0-255 of the vocabulary,
the rest unused) and keeps checkpoints: in a Kaon job's checkpoint folder, else in
out/gpt/checkpoints, so running it again resumes. The byte tokenizer is saved beside them
(``save_byte_tokenizer``) and their model card names ``model:GPT`` and the config's name
as the factory, so ``kaon deploy create gpt --llm --from-job JOB`` serves a job's model
with no code of its own (docs/llm.md).

What else it writes goes to out/gpt/ (``--out``), one folder per example like the others.
"""

import argparse
import math
from pathlib import Path

from model import CONFIGS, GPT, RandomTokens, TextWindows
from torch.utils.data import Dataset

from kaon.train import TrainConfig, Trainer, save_byte_tokenizer, seed_everything
from kaon.train.checkpoint import checkpoint_root

FACTORY = "model:GPT"  # what a replica imports from the job's code to rebuild the network


def config_for(args: argparse.Namespace, epochs: int = 1) -> TrainConfig:
    return TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=6e-4, weight_decay=0.1,
        batch_size=args.batch_size, epochs=epochs, max_steps=args.steps, clip_grad_norm=1.0,
        compile=args.compile, log_every_steps=args.log_every,
        checkpointing=args.text is not None, tensorboard=False, output_dir=args.out,
        seed=args.seed,
    )  # fmt: skip


def epochs_for(steps: int, batch_size: int, windows: int) -> int:
    """Enough passes over the text for `steps` batches: `max_steps` is what stops it."""
    return max(1, math.ceil(steps * batch_size / windows))


def text_windows(path: str, context: int) -> TextWindows:
    data = TextWindows(Path(path).read_bytes(), context)
    if len(data) == 0:
        raise SystemExit(f"{path} is too short: a window needs {context + 1} bytes")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", metavar="FILE", help="train on this file's bytes, keep "
                        "checkpoints and the tokenizer (instead of random tokens)")  # fmt: skip
    parser.add_argument("--out", default="out/gpt", help="output folder")
    args = parser.parse_args()

    seed_everything(args.seed)
    model = GPT(args.config)
    c = model.config
    data: Dataset[object]
    if args.text is None:
        data = RandomTokens(args.steps * args.batch_size, c.context, c.vocab, args.seed)
        config = config_for(args)
    else:
        data = text_windows(args.text, c.context)
        config = config_for(args, epochs_for(args.steps, args.batch_size, len(data)))
        save_byte_tokenizer(config)  # what serving needs beside the checkpoints
    trainer = Trainer(model, data, config=config, model_factory=FACTORY,
                      model_kwargs={"name": args.config})  # fmt: skip
    trainer.fit()

    rates = [point["samples_per_s"] for point in trainer.history if "samples_per_s" in point]
    steady = rates[1:] or rates  # the first window includes start-up (and compilation)
    tokens_per_s = sum(steady) / len(steady) * c.context
    print(f"{args.config}: {model.num_params() / 1e6:.1f}M parameters, "
          f"{tokens_per_s:,.0f} tokens/s")  # fmt: skip
    if args.text is not None:
        print(f"checkpoints in {checkpoint_root(config)}")


if __name__ == "__main__":
    main()
