"""Reading a job trace: CSV rows `timestamp,duration,num_gpus,gpu_time,cluster`.

`timestamp` is the submit time, as "YYYY-mm-dd HH:MM:SS" or as seconds; `duration` is the
run time in seconds; `gpu_time` is GPU-seconds (used only to size the tenants' quotas);
`cluster` names the tenant. A bad row raises `TraceError` naming the file, the line and
the column, because a trace with a thousand rows is fixed by jumping to the line, not by
reading a traceback.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = ("timestamp", "duration", "num_gpus", "gpu_time", "cluster")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class TraceError(ValueError):
    """A trace that cannot be read; the message is `file:line: column 'name': problem`."""

    def __init__(self, path: str, line: int, column: str | None, problem: str) -> None:
        where = f"{path}:{line}: " + (f"column '{column}': " if column else "")
        super().__init__(where + problem)
        self.path, self.line, self.column = path, line, column


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace, its submit time in seconds from the trace's first submit."""

    id: str
    submit: float
    duration: float
    num_gpus: int
    gpu_time: float
    tenant: str


def read_trace(path: Path | str, limit: int | None = None) -> list[TraceJob]:
    """All jobs of the CSV trace at `path` (the first `limit` rows if given), by submit."""
    name = str(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(name, 0, None, f"cannot open: {e.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[: len(COLUMNS)]] != list(COLUMNS):
            raise TraceError(name, 1, None, f"expected the header {','.join(COLUMNS)}")
        rows: list[_Row] = []
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            if row:
                rows.append(_parse_row(name, reader.line_num, row))
    if not rows:
        raise TraceError(name, 2, None, "the trace has no jobs")
    start = min(r[0] for r in rows)
    jobs = [TraceJob(f"job-{line}", t - start, d, g, gt, c) for t, d, g, gt, c, line in rows]
    return sorted(jobs, key=lambda j: (j.submit, j.id))


_Row = tuple[float, float, int, float, str, int]


def _parse_row(name: str, line: int, row: list[str]) -> _Row:
    if len(row) < len(COLUMNS):
        missing = COLUMNS[len(row)]
        raise TraceError(name, line, missing, f"missing (the row has {len(row)} columns)")
    cells = dict(zip(COLUMNS, (c.strip() for c in row), strict=False))

    def get(column: str, convert: Callable[[str], float], what: str) -> float:
        try:
            value = convert(cells[column])
        except ValueError:
            raise TraceError(
                name, line, column, f"expected {what}, got {cells[column]!r}"
            ) from None
        if not value >= 0 or value == float("inf"):
            raise TraceError(name, line, column, f"expected {what}, got {cells[column]!r}")
        return value

    submit = get("timestamp", _seconds, "'YYYY-mm-dd HH:MM:SS' or seconds")
    duration = get("duration", float, "a positive number of seconds")
    gpus = get("num_gpus", _whole, "a whole number of GPUs, at least 1")
    gpu_time = get("gpu_time", float, "a number of GPU-seconds")
    if duration <= 0:
        raise TraceError(name, line, "duration", f"expected a positive number, got {duration:g}")
    if gpus < 1:
        raise TraceError(name, line, "num_gpus", "expected a whole number of GPUs, at least 1")
    if not cells["cluster"]:
        raise TraceError(name, line, "cluster", "expected a tenant name, got an empty cell")
    return submit, duration, int(gpus), gpu_time, cells["cluster"], line


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def _whole(text: str) -> float:
    value = float(text)
    if value != int(value):
        raise ValueError(text)
    return value
