"""Train a GPT-2-style model on random tokens with kaon.train, to measure throughput.

    python train.py --config tiny --steps 20                     # anywhere, seconds
    python train.py --config 124m --batch-size 16 --compile      # one GPU
    torchrun --nproc-per-node 8 train.py --config 1.3b ...       # or as a Kaon job

The tokens are random, so the loss only falls to log(vocab); the point is tokens per
second and MFU on real shapes, without a tokenizer or a dataset download.

It keeps no checkpoints (a benchmark measures from a fresh start every time); what else it
writes goes to out/gpt/ (``--out``), one folder per example like the others.
"""

import argparse

from model import CONFIGS, GPT, RandomTokens

from kaon.train import TrainConfig, Trainer, seed_everything


def config_for(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        loss="cross_entropy", optimizer="adamw", lr=6e-4, weight_decay=0.1,
        batch_size=args.batch_size, epochs=1, max_steps=args.steps, clip_grad_norm=1.0,
        compile=args.compile, log_every_steps=args.log_every, checkpointing=False,
        tensorboard=False, output_dir=args.out, seed=args.seed,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/gpt", help="output folder")
    args = parser.parse_args()

    seed_everything(args.seed)
    model = GPT(args.config)
    c = model.config
    data = RandomTokens(args.steps * args.batch_size, c.context, c.vocab, args.seed)
    trainer = Trainer(model, data, config=config_for(args), model_kwargs={"name": args.config})
    trainer.fit()

    rates = [point["samples_per_s"] for point in trainer.history if "samples_per_s" in point]
    steady = rates[1:] or rates  # the first window includes start-up (and compilation)
    tokens_per_s = sum(steady) / len(steady) * c.context
    print(f"{args.config}: {model.num_params() / 1e6:.1f}M parameters, "
          f"{tokens_per_s:,.0f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
