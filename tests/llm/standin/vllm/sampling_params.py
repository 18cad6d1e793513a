"""The stand-in's ``vllm.sampling_params``: `SamplingParams` and `RequestOutputKind`, with
vLLM's field names, defaults and the checks that concern the fields Kaon sets (see the
package's docstring for why this exists and which vLLM it follows)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # the whole output so far in every RequestOutput
    DELTA = 1  # only what is new since the last one
    FINAL_ONLY = 2  # one RequestOutput, at the end


@dataclass
class SamplingParams:
    """vLLM's fields that Kaon's adapter sets, with vLLM's defaults; any other field is a
    ``TypeError`` here (vLLM accepts it), so the adapter cannot lean on one unseen."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    detokenize: bool = True
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")
