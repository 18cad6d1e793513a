"""Where the run computes and how its processes talk: device, precision, DDP, random state.

A Kaon job with several workers gets ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in its environment, exactly what ``torch.distributed``'s
``env://`` rendezvous reads, so `setup_runtime` only has to pick the backend: NCCL for
GPUs, gloo for CPUs. Small control messages (stop now? is a checkpoint due? which
checkpoint do we resume?) always go over gloo on the CPU, so asking them never waits for
the GPU's queue of work to drain.

Random state is saved per rank and restored exactly, which is what makes a resumed CPU
run end with the same bits as one that never stopped.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

from kaon.train.config import TrainConfig, TrainConfigError

__all__ = ["Collectives", "Runtime", "get_rng_state", "seed_everything", "set_rng_state"]


@dataclass(frozen=True)
class Runtime:
    """The device, the autocast dtype (None: plain float32) and this process's place."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise TrainConfigError(f"{name} must be an integer, got {value!r}") from None


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device and precision and, when WORLD_SIZE > 1, join the process group."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _pick_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 keeps float32 matmuls (whatever autocast leaves in fp32) on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=10)
        )
    return Runtime(device, _pick_amp_dtype(config.precision, device), rank, local_rank, world_size)


def _pick_device(wanted: str, local_rank: int) -> torch.device:
    if wanted != "auto":
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16  # same range as fp32, so no loss scaling is needed
    return None  # CPU: float32 is both the fastest and the reproducible choice


class Collectives:
    """The few messages ranks exchange besides gradients. Every method is a collective:
    all ranks call it at the same point, or none does. With one process each is local."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._group: Any = None
        if runtime.distributed:
            on_gloo = dist.get_backend() == "gloo"
            self._group = dist.group.WORLD if on_gloo else dist.new_group(backend="gloo")
        self._flags = torch.zeros(2, dtype=torch.int32)

    def any(self, first: bool, second: bool) -> tuple[bool, bool]:
        """Whether any rank has each flag set: one tiny all-reduce for both."""
        if self._group is None:
            return first, second
        self._flags[0], self._flags[1] = int(first), int(second)
        dist.all_reduce(self._flags, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._flags[0]), bool(self._flags[1])

    def sum(self, values: list[float]) -> list[float]:
        if self._group is None:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, group=self._group)
        return [float(v) for v in tensor.tolist()]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self._group is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self._group is None:
            return [value]
        out: list[Any] = [None] * self.runtime.world_size
        dist.all_gather_object(out, value, group=self._group)
        return out

    def place(self) -> tuple[int, int]:
        """(rank, world size) while in the process group; (0, 1) once it is left."""
        if self._group is None:
            return 0, 1
        return self.runtime.rank, self.runtime.world_size

    def barrier(self) -> None:
        if self._group is not None:
            dist.barrier(group=self._group)

    def close(self) -> None:
        """Leave the process group, so later evaluation runs locally and exit is clean."""
        if self._group is not None and dist.is_initialized():
            dist.destroy_process_group()
        self._group = None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device included).

    Call it before building the model so its initial weights repeat too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generator states, in types `torch.load(weights_only=True)` accepts."""
    numpy_state = cast(tuple[str, Any, int, int, float], np.random.get_state(legacy=True))
    _, keys, pos, has_gauss, gauss = numpy_state
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
