"""Two Gaussian blobs, one small MLP: the smallest complete Kaon training job.

    python train.py --epochs 10

100 training points and a held-out test set, inputs normalised, a 2-5-1 MLP with binary
cross-entropy and Adam (lr 0.01, batch 4). kaon.train reports the loss of each epoch to
the platform; this script adds the test accuracy and which input feature mattered.

It writes to out/binary_classifier/ (``--out``): one folder per example, so two examples
run from the same place never resume each other's checkpoints, and the same folder on
every run, so running the command again resumes this one instead of starting over.
"""

import argparse

import torch
from model import BinaryClassifier
from torch.utils.data import TensorDataset

import kaon
from kaon.train import TrainConfig, Trainer, seed_everything
from kaon.train.explain import explain


def blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points: even ones around (-1.5, -1.5) with label 0, odd ones around (1.5, 1.5)."""
    labels = (torch.arange(n) % 2).float().unsqueeze(1)
    centers = (labels * 2 - 1) * 1.5
    return centers + torch.randn(n, 2, generator=generator), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--test-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/binary_classifier", help="output folder")
    args = parser.parse_args()

    seed_everything(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = blobs(args.samples, generator)
    x_test, y_test = blobs(args.test_samples, generator)
    model = BinaryClassifier()
    model.fit_normalizer(x_train)  # normalise with training statistics only

    config = TrainConfig(
        loss="bce", optimizer="adam", lr=0.01, batch_size=4, epochs=args.epochs,
        seed=args.seed, output_dir=args.out,
    )  # fmt: skip
    trainer = Trainer(model, TensorDataset(x_train, y_train), config=config, metrics=["accuracy"])
    result = trainer.fit()

    accuracy = trainer.evaluate(TensorDataset(x_test, y_test))["accuracy"]
    kaon.report(step=int(result["step"]), test_accuracy=accuracy)
    print(f"test accuracy: {accuracy:.2f}")

    attributions = explain(model, x_test).abs().mean(0)
    print("mean |attribution| per feature (integrated gradients):", end="")
    print("".join(f" x{i} {value:.3f}" for i, value in enumerate(attributions.tolist())))


if __name__ == "__main__":
    main()
