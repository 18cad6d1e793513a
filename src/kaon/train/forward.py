"""The function the loop calls for a micro-batch's loss: model and loss as one module.

Putting the loss inside the module is what lets `torch.compile` fuse it (for a language
model, a softmax over the vocabulary) into the forward graph, and what gives DDP a module
whose output is the loss. A plain run (no compile, one process) calls the bound `forward`
directly, skipping one module call's overhead per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from kaon.train.config import LossFn
from kaon.train.runtime import Runtime

__all__ = ["ForwardLoss", "build_forward_loss"]

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ForwardLoss(torch.nn.Module):
    """The model and the loss as one module, under autocast when the runtime asks for it."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, runtime: Runtime) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.device_type = runtime.device.type
        self.amp_dtype = runtime.amp_dtype

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is None:
            return self.loss_fn(self.model(inputs), targets)
        with torch.autocast(self.device_type, dtype=self.amp_dtype):
            outputs = self.model(inputs)
        # The loss runs outside autocast, in float32: a reduction over many terms needs
        # the precision, and binary cross-entropy refuses to autocast at all.
        return self.loss_fn(outputs.float(), targets)


def build_forward_loss(
    model: torch.nn.Module, loss_fn: LossFn, runtime: Runtime, compile: bool
) -> tuple[ForwardFn, DistributedDataParallel | None]:
    """(the loss function the loop calls, the DDP wrapper or None): compiled and
    DDP-wrapped as asked. The loop needs the wrapper itself for `no_sync()`."""
    module = ForwardLoss(model, loss_fn, runtime)
    if not compile and not runtime.distributed:
        return module.forward, None
    wrapped: Any = torch.compile(module) if compile else module
    if not runtime.distributed:
        return wrapped, None
    device = runtime.device
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(wrapped, device_ids=ids)
    return ddp, ddp
