"""Everything the CLI prints: Rich tables for people, JSON for scripts.

Tables fit the terminal by wrapping, never by cutting: Rich's default ends a long value
in "…", and a cut id, URL or label is worse than none (people copy them into their next
command). So every column folds, and id columns keep their full width.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from kaon.core.jobs import JobStatus, JobView, MetricView
from kaon.core.nodes import NodeView
from kaon.core.resources import format_memory
from kaon.core.usage import JobUsage

console = Console()
err = Console(stderr=True)

STATUS_STYLE = {
    JobStatus.QUEUED: "yellow",
    JobStatus.STARTING: "cyan",
    JobStatus.RUNNING: "blue",
    JobStatus.RETRYING: "magenta",
    JobStatus.PREEMPTED: "magenta",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "dim",
}


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    print(json.dumps(data, indent=2))


def status_text(status: JobStatus) -> str:
    return f"[{STATUS_STYLE[status]}]{status.value}[/]"


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _table() -> Table:
    return Table(box=None, header_style="bold")


def column(table: Table, header: str, *, no_wrap: bool = False) -> None:
    """A column that wraps its values, long words too, instead of ending them in "…"."""
    table.add_column(header, no_wrap=no_wrap, overflow="fold")


def id_column(table: Table, header: str, ids: Iterable[str]) -> None:
    """A column of ids (or names) people copy into their next command: never cut, however
    narrow the terminal; the other columns wrap or shorten instead. Rich shrinks even
    no-wrap columns as a last resort, but never below `min_width`."""
    width = max((len(i) for i in ids), default=0)
    table.add_column(header, no_wrap=True, min_width=max(width, len(header)))


def jobs_table(jobs: Sequence[JobView]) -> Table:
    table = _table()
    id_column(table, "ID", (j.id for j in jobs))
    column(table, "NAME")
    column(table, "STATUS", no_wrap=True)
    column(table, "WORKERS", no_wrap=True)
    column(table, "EACH WORKER")
    column(table, "SUBMITTED", no_wrap=True)
    column(table, "INFO")
    for job in jobs:
        res = job.spec.resources
        gpus = f", {res.gpus} GPU" if res.gpus else ""
        info = _job_info(job)
        table.add_row(
            job.id,
            job.name or "-",
            status_text(job.status),
            str(job.spec.workers),
            f"{res.cpu:g} CPU, {format_memory(res.memory)}{gpus}",
            ago(job.submitted_at),
            info or "",
        )
    return table


def _job_info(job: JobView) -> str:
    """Why a job waits or how it ended; nothing for a success, which its status says."""
    if job.status is JobStatus.QUEUED:
        return job.waiting_reason or ""
    return "" if job.status is JobStatus.SUCCEEDED else job.message


def job_detail(job: JobView) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # ids and commands wrap, never end in "..."
    rows = [
        ("id", job.id),
        ("name", job.name or "-"),
        ("workspace", job.workspace),
        ("status", status_text(job.status)),
        ("message", job.message or "-"),
        ("command", shlex.join(job.spec.command)),  # as a shell would take it back
        ("workers", str(job.spec.workers)),
        ("restarts", str(job.restart_count)),
        ("preemptions", str(job.preemptions)),
        ("submitted", ago(job.submitted_at)),
        ("started", ago(job.started_at)),
        ("finished", ago(job.finished_at)),
    ]
    if job.waiting_reason:
        rows.insert(5, ("waiting because", job.waiting_reason))
    for key, value in rows:
        table.add_row(key, value)
    for w in job.workers:
        state = "running" if w.exit_code is None else f"exit {w.exit_code}"
        gpus = f" GPUs {w.gpus}" if w.gpus else ""
        table.add_row(
            f"worker {w.index}", f"{w.node}{gpus} pid {w.pid or '-'} {state} {w.reason or ''}"
        )
    return table


def nodes_table(nodes: Sequence[NodeView]) -> Table:
    """The pool, a node a row. A node is shown by its id, the name every other message
    uses for it (a job's workers, a waiting reason's "holding node(s) local"); this
    machine's host name is in ``kaon nodes --json`` as ``name``."""
    table = _table()
    id_column(table, "NODE", (n.id for n in nodes))
    for header in ("POOL", "ADDRESS", "STATE", "CPU", "MEMORY", "GPUS", "LABELS"):
        column(table, header)
    table.caption = "CPU, MEMORY, GPUS: allocated/total (and the GPU model)"
    for n in nodes:
        models = " ".join(sorted({g.model for g in n.gpus}))
        state = n.state if n.state == "ready" or not n.message else f"{n.state}: {n.message}"
        table.add_row(
            n.id,
            n.executor,
            n.address,
            state,
            f"{n.cpu_allocated:g}/{n.cpu:g}",
            f"{format_memory(n.memory_allocated)}/{format_memory(n.memory)}",
            f"{len(n.gpus_allocated)}/{len(n.gpus)} {models}".rstrip(),
            "\n".join(f"{k}={v}" for k, v in n.labels.items()) or "-",  # one a line
        )
    return table


def metrics_table(points: Sequence[MetricView]) -> Table:
    names = sorted({p.name for p in points})
    by_step: dict[tuple[int, int | None], dict[str, float]] = {}
    for p in points:
        by_step.setdefault((p.worker, p.step), {})[p.name] = p.value
    table = _table()
    for header in ("WORKER", "STEP", *names):
        column(table, header)
    for (worker, step), values in by_step.items():
        table.add_row(
            str(worker),
            "-" if step is None else str(step),
            *(f"{values[n]:.6g}" if n in values else "" for n in names),
        )
    return table


def usage_table(usage: JobUsage) -> Table:
    """`kaon job top`: each worker's latest sample. GPU columns say "-" where nothing was
    measured (no GPU, or GPUs only declared), never a made-up zero."""
    table = _table()
    for header in ("WORKER", "CPU (cores)", "MEMORY (GiB)", "GPU UTIL", "GPU MEM (GiB)", "AGE"):
        column(table, header)
    now = datetime.now(UTC).timestamp()
    for w in usage.workers:
        s = w.latest
        if s is None:  # pragma: no cover - a worker is listed once it sent a sample
            continue
        table.add_row(
            str(w.worker),
            "-" if s.cpu is None else f"{s.cpu:.2f}",
            "-" if s.rss_bytes is None else f"{s.rss_bytes / 2**30:.2f}",
            "-" if s.gpu_util is None else f"{s.gpu_util:.0f}%",
            "-" if s.gpu_mem_bytes is None else f"{s.gpu_mem_bytes / 2**30:.2f}",
            f"{max(0.0, now - s.time):.0f}s ago",
        )
    return table


def rows_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A plain table whose first column (an id or name in every table Kaon prints) is
    never cut."""
    table = _table()
    id_column(table, columns[0], (row[0] for row in rows))
    for header in columns[1:]:
        column(table, header)
    for row in rows:
        table.add_row(*row)
    return table
