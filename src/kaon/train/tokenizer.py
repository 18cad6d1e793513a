"""The tokenizer of a language model, saved beside its checkpoints so the job's model can be
served with no code of the user's: ``kaon deploy create NAME --llm --from-job JOB``.

A checkpoint holds the weights and the model card (how to rebuild the network), but text
only becomes the model's tokens through the tokenizer it was trained with, which a
training script builds itself (``examples/llm`` takes the sorted characters of its text).
So the script saves it once, before training:

>>> config = TrainConfig(...)
>>> save_char_tokenizer(config, alphabet)      # one token per character of `alphabet`
>>> save_byte_tokenizer(config)                # or UTF-8 bytes as tokens 0-255
>>> Trainer(model, data, config=config).fit()

It is a small JSON file, ``kaon_tokenizer.json``, in the checkpoint folder (the same folder
`checkpoint_root` picks: ``$KAON_CHECKPOINT_DIR`` in a Kaon job), so registering the job's
checkpoints as a model ships it too. `kaon.llm.ready` reads it back with `read_tokenizer`.
Only rank 0 writes it, atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kaon.train.checkpoint import checkpoint_root
from kaon.train.config import TrainConfig

__all__ = [
    "TOKENIZER_FILE",
    "check_tokenizer",
    "read_tokenizer",
    "save_byte_tokenizer",
    "save_char_tokenizer",
]

TOKENIZER_FILE = "kaon_tokenizer.json"
KINDS = ("char", "byte")


def save_char_tokenizer(
    where: TrainConfig | str | Path, alphabet: str, *, eos: str | None = None
) -> Path | None:
    """One token per character of `alphabet`, in order; generation stops at `eos` if given.
    `where` is the run's config (its checkpoint folder) or a folder. Returns the file
    written (None on ranks other than 0)."""
    return _save(where, {"kind": "char", "alphabet": alphabet, "eos": eos})


def save_byte_tokenizer(
    where: TrainConfig | str | Path, *, eos_id: int | None = None
) -> Path | None:
    """UTF-8 bytes as tokens 0-255 (a model with a vocabulary of at least 256)."""
    return _save(where, {"kind": "byte", "eos_id": eos_id})


def check_tokenizer(spec: Any) -> dict[str, Any]:
    """`spec` if it describes a tokenizer this module writes; ValueError naming the field."""
    if not isinstance(spec, dict):
        raise ValueError(f"{TOKENIZER_FILE} must hold a JSON object")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{TOKENIZER_FILE}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "char":
        alphabet = spec.get("alphabet")
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"{TOKENIZER_FILE}: alphabet must be a non-empty string")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"{TOKENIZER_FILE}: alphabet has a character twice")
        eos = spec.get("eos")
        if eos is not None and (not isinstance(eos, str) or eos not in alphabet):
            raise ValueError(f"{TOKENIZER_FILE}: eos must be a character of the alphabet")
    else:
        eos_id = spec.get("eos_id")
        if eos_id is not None and (not isinstance(eos_id, int) or not 0 <= eos_id < 256):
            raise ValueError(f"{TOKENIZER_FILE}: eos_id must be a byte, 0 to 255")
    return spec


def read_tokenizer(folder: str | Path) -> dict[str, Any] | None:
    """The tokenizer saved in `folder` (a checkpoint folder), or None if none was."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return check_tokenizer(spec)


def _save(where: TrainConfig | str | Path, spec: dict[str, Any]) -> Path | None:
    check_tokenizer(spec)
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # one writer: every rank builds the same tokenizer
    folder = checkpoint_root(where) if isinstance(where, TrainConfig) else Path(where)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / TOKENIZER_FILE
    scratch = folder / f".{TOKENIZER_FILE}.{os.getpid()}.part"
    with scratch.open("w", encoding="utf-8") as f:
        json.dump({"format": 1, **spec}, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(scratch, final)
    return final
