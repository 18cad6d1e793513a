"""The example models (``examples/gpt``, ``examples/char_lm``), tiny and with random weights.

They are loaded from the example files themselves, so the runtime is tested against the
very classes users train, not look-alikes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
ALPHABET = " \nabcdefghijklmnopqrstuvwxyz.,:!?'"


def _example(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(path.parent))  # examples/gpt/train.py imports its model.py
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def char_model(seed: int = 0, block: int = 64) -> nn.Module:
    """``examples/char_lm``'s CharTransformer, small."""
    torch.manual_seed(seed)
    module = _example("kaon_example_char_lm", ROOT / "examples" / "char_lm" / "train.py")
    model: nn.Module = module.CharTransformer(vocab=len(ALPHABET), block=block, dim=32, layers=2)
    return model.eval()


def gpt_model(seed: int = 0) -> nn.Module:
    """``examples/gpt``'s GPT in its "tiny" shape (2 layers, d=64, 512 tokens)."""
    torch.manual_seed(seed)
    module = _example("kaon_example_gpt_model", ROOT / "examples" / "gpt" / "model.py")
    model: nn.Module = module.GPT("tiny")
    return model.eval()
