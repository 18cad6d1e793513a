"""kaon.train: a small PyTorch trainer that a Kaon job runs as ``python train.py``.

>>> from kaon.train import Trainer, TrainConfig
>>> trainer = Trainer(model, train_data=ds, val_data=val_ds,
...                   config=TrainConfig(loss="bce", optimizer="adam", lr=0.01,
...                                      batch_size=4, epochs=10, seed=0))
>>> result = trainer.fit()

It picks the device and precision, runs DDP when the job has several workers, writes
atomic checkpoints and resumes from them, turns SIGTERM into "checkpoint, then exit 75",
and reports metrics to the platform, TensorBoard and the console. See docs/train.md.
`kaon.train.explain` (integrated gradients) loads Captum only when used.
`save_char_tokenizer` / `save_byte_tokenizer` keep a language model's tokenizer beside its
checkpoints, so ``kaon deploy create NAME --llm --from-job JOB`` can serve it.
"""

from kaon.train.checkpoint import CheckpointWarning
from kaon.train.checkpointer import CheckpointMismatchError
from kaon.train.config import TrainConfig, TrainConfigError
from kaon.train.predict import latest_checkpoint, load_model, predict, read_model_card
from kaon.train.runtime import seed_everything
from kaon.train.tokenizer import save_byte_tokenizer, save_char_tokenizer
from kaon.train.trainer import Preempted, Trainer

__all__ = [
    "CheckpointMismatchError",
    "CheckpointWarning",
    "Preempted",
    "TrainConfig",
    "TrainConfigError",
    "Trainer",
    "latest_checkpoint",
    "load_model",
    "predict",
    "read_model_card",
    "save_byte_tokenizer",
    "save_char_tokenizer",
    "seed_everything",
]
