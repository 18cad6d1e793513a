"""Where the numbers go: the platform, TensorBoard and the console, from rank 0 only.

`kaon.report` sends each point to the control plane (it does nothing outside a Kaon job).
TensorBoard event files go to ``<output_dir>/tensorboard`` when the package is installed.
On a terminal a one-line progress bar redraws at most five times a second (each redraw
reads the loss, a GPU sync, so it is rationed); in a log file, which is what a job's
stdout is, there is one line per epoch and per evaluation instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kaon.report import flush, report

__all__ = ["Reporter"]

_BAR_WIDTH = 24
_REDRAW_S = 0.2


class Reporter:
    """Sends metric points everywhere they should go; a no-op on ranks other than 0."""

    def __init__(
        self,
        enabled: bool,
        output_dir: str,
        tensorboard: bool,
        progress: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self.history: list[dict[str, float]] = []
        self._stream = stream or sys.stdout
        self._console = enabled and progress
        self._tty = self._console and self._stream.isatty()
        self._tensorboard = _open_tensorboard(output_dir) if enabled and tensorboard else None
        self._next_redraw = 0.0

    def log(self, step: int, values: dict[str, float], label: str) -> None:
        """One point: to the platform, TensorBoard and the history; a console line."""
        if not self.enabled:
            return
        self.history.append({"step": float(step), **values})
        report(step=step, **values)
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._console:
            shown = " ".join(
                f"{name} {_fmt(value)}" for name, value in values.items() if name != "epoch"
            )
            self.message(f"{label} step {step} {shown}")

    def bar(self, epoch: int, epochs: int, done: int, total: int, loss: Any) -> None:
        """Redraw the progress bar, if on a terminal and it is time. `loss` is a function,
        called only when the bar is drawn (it syncs with the GPU)."""
        if not self._tty:
            return
        now = time.monotonic()
        if now < self._next_redraw and done < total:
            return
        self._next_redraw = now + _REDRAW_S
        filled = _BAR_WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        label = f"epoch {epoch + 1}/{epochs}"
        self._stream.write(f"\r{label} [{bar}] {done}/{total} loss {_fmt(loss())}")
        self._stream.flush()

    def message(self, text: str) -> None:
        if self._console:
            prefix = "\r\033[K" if self._tty else ""  # clear the bar before a line
            self._stream.write(f"{prefix}{text}\n")
            self._stream.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self.enabled:
            flush()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _open_tensorboard(output_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics still reach kaon.report
        return None
    return SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
