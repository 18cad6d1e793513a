"""Resources and their arithmetic: CPUs, memory, GPUs.

Memory is kept in bytes everywhere inside Kaon and parsed from the human forms users type
(``512Mi``, ``4Gi``, ``2G``, ``1.5GiB``) only at the edge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import MAX_BYTES

MAX_CPUS = 2.0**20
MAX_GPUS = 2**20
"""Bounds far over any node, so an absurd number is refused at the edge, naming its
field, instead of overflowing a column or the scheduler's arithmetic."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "ki": 2**10,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gi": 2**30,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "ti": 2**40,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: str | int | float) -> int:
    """Bytes from ``"4Gi"``, ``"512Mi"``, ``"2G"`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size like '4Gi' or a number of bytes")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("memory must be a finite number of bytes")
        return int(value)
    match = _MEMORY.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"memory {value!r} is not a size like '512Mi', '4Gi' or '2G'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_memory(n: int) -> str:
    """``4294967296`` -> ``"4.0Gi"``: the short binary form, for tables."""
    size = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(size) < 1024 or unit == "Ti":
            return f"{size:.0f}" if unit == "" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}Ti"  # pragma: no cover


def describe_memory(n: int, digits: int = 1) -> str:
    """``107374182400`` -> ``"100 GiB"``, ``25276063744`` -> ``"23.5 GiB"``: the form for
    sentences people read (an error naming a size), where a byte count is unreadable and
    a trailing ``.0`` is noise. `digits` more decimals tell two close sizes apart."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    if unit == "bytes":
        return f"{n} byte" if n == 1 else f"{n} bytes"
    return f"{size:.{digits}f}".rstrip("0").rstrip(".") + f" {unit}"


class Resources(BaseModel):
    """What one worker (or replica) asks for. Memory in bytes; parsed from ``"4Gi"`` too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    cpu: float = Field(default=1.0, gt=0, le=MAX_CPUS, description="CPU cores, may be fractional")
    memory: int = Field(
        default=2**30, gt=0, le=MAX_BYTES, description="bytes; '4Gi' style strings accepted"
    )
    gpus: int = Field(default=0, ge=0, le=MAX_GPUS, description="whole GPUs")
    gpu_type: str | None = Field(default=None, description="e.g. 'H100'; any type when unset")

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_memory(cls, value: object) -> object:
        if isinstance(value, str | bool):  # a bool is not 1 byte
            return parse_memory(value)
        return value


@dataclass(frozen=True)
class Amount:
    """Plain resource amounts for arithmetic (capacity, allocation, free)."""

    cpu: float = 0.0
    memory: int = 0
    gpus: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.cpu + other.cpu, self.memory + other.memory, self.gpus + other.gpus)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.cpu - other.cpu, self.memory - other.memory, self.gpus - other.gpus)

    def __mul__(self, n: int) -> Amount:
        return Amount(self.cpu * n, self.memory * n, self.gpus * n)

    def fits_in(self, other: Amount) -> bool:
        """True when every dimension of self is at most other's (with float slack on cpu)."""
        return (
            self.cpu <= other.cpu + 1e-9
            and self.memory <= other.memory
            and self.gpus <= other.gpus
        )

    @staticmethod
    def of(resources: Resources) -> Amount:
        return Amount(resources.cpu, resources.memory, resources.gpus)
