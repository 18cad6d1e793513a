"""`kaon job ...`: submit, watch and manage jobs."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from kaon.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    ClientOpt,
    JsonOpt,
    exit_on_error,
    make_client,
)
from kaon.cli.render import (
    console,
    err,
    job_detail,
    jobs_table,
    metrics_table,
    print_json,
    status_text,
    usage_table,
)
from kaon.core.jobs import JobStatus, JobView
from kaon.core.usage import JobUsage
from kaon.sdk.client import Client

app = typer.Typer(help="Run and manage jobs.", no_args_is_help=True)


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{option} expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _parse_env(pairs: list[str], secrets: list[str]) -> dict[str, Any]:
    """``--env KEY=VALUE`` plain values and ``--secret VAR=NAME`` references to secrets."""
    env: dict[str, Any] = dict(_parse_pairs(pairs, "--env"))
    for var, name in _parse_pairs(secrets, "--secret").items():
        env[var] = {"secret": name}
    return env


def _load_spec_file(path: Path) -> tuple[dict[str, Any], Path | None]:
    """A job YAML: JobSpec fields, plus `workdir` relative to the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a mapping of job fields")
    workdir = data.pop("workdir", None)
    if isinstance(data.get("command"), str):
        data["command"] = _split_command(data["command"], path)
    return data, (path.parent / workdir) if workdir else None


def _split_command(text: str, path: Path) -> list[str]:
    """A YAML `command:` written as one line, split as a shell would: people copy it from
    a terminal, where ``python -c "print(3)"`` is three arguments with no quotes left."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise typer.BadParameter(f"{path}: command {text!r}: {e}") from None


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str] | None, typer.Argument(help="the command, after --")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="job spec YAML")] = None,
    name: Annotated[str | None, typer.Option(help="a label for the job")] = None,
    workers: Annotated[int | None, typer.Option(help="gang size: all start or none")] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", "--cpus", help="CPUs per worker")] = None,
    memory: Annotated[str | None, typer.Option(help="memory per worker, e.g. 4Gi")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per worker")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")
    ] = None,
    secret_env: Annotated[
        list[str] | None,
        typer.Option("--secret", help="VAR=SECRET_NAME: the variable gets the secret, repeatable"),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="folder to upload as the working directory")
    ] = None,
    no_workdir: Annotated[
        bool, typer.Option("--no-workdir", help="do not upload a folder")
    ] = False,
    max_retries: Annotated[int | None, typer.Option(help="restarts after a failure")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds before the job is stopped")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="higher runs first")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="node label KEY=VALUE the nodes must carry"),
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="submit and return")] = False,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Submit a job, then follow its log until it ends (exit code 0 only if it succeeded).

    kaon job run --gpus 1 --workers 2 -- python train.py
    kaon job run --workers 2 --label kaon.io/pool=ray -- python train.py   # on a Ray pool
    """
    spec: dict[str, Any] = {}
    folder = None
    if file is not None:
        spec, folder = _load_spec_file(file)
    if workdir is not None:
        folder = workdir
    elif folder is None and not no_workdir and command:
        folder = Path(".")
    if no_workdir:
        folder = None
    if not command and not spec.get("command"):
        err.print("[red]error:[/] give a command after -- or a spec file with -f")
        raise typer.Exit(EXIT_INPUT)
    kaon = make_client(client)
    with exit_on_error():
        with err.status("uploading the working directory ..." if folder else "submitting ..."):
            job = kaon.jobs.submit(
                command or None,
                spec=spec,
                workdir=folder,
                name=name,
                env=_parse_env(env or [], secret_env or []) or None,
                cpu=cpu,
                memory=memory,
                gpus=gpus,
                workers=workers,
                max_retries=max_retries,
                labels=_parse_pairs(label or [], "--label") or None,
                timeout_s=timeout,
                priority=priority,
            )
    if json_ and detach:
        print_json(job)
        return
    err.print(f"submitted job [bold]{job.id}[/]")
    if detach:  # the next command people want, with the id filled in
        err.print(f"[dim]follow it: kaon job logs {job.id} -f[/]", highlight=False)
        return
    final = _follow(kaon, job)
    if json_:
        print_json(final)
    raise typer.Exit(0 if final.status is JobStatus.SUCCEEDED else EXIT_FAILED)


def _follow(kaon: Client, job: JobView) -> JobView:
    """Wait for the job to start (with a spinner), stream worker 0's log, report the end."""
    with exit_on_error():
        with err.status("queued ...") as spinner:
            while job.status in (JobStatus.QUEUED, JobStatus.STARTING):
                spinner.update(f"{job.status.value}: {job.waiting_reason or job.message or '...'}")
                time.sleep(0.2)
                job = kaon.jobs.get(job.id)
        for text in kaon.jobs.follow(job.id):
            sys.stdout.write(text)
            sys.stdout.flush()
        job = kaon.jobs.wait(job.id)
    err.print(f"job {job.id} {status_text(job.status)}: {job.message}")
    return job


@app.command("list")
def list_(
    status: Annotated[list[JobStatus] | None, typer.Option(help="filter, repeatable")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List jobs, newest first; a queued job says why it waits."""
    with exit_on_error():
        jobs = make_client(client).jobs.list(status, limit)
    print_json(jobs) if json_ else console.print(jobs_table(jobs))


@app.command()
def get(job_id: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Show one job, its workers and why it is where it is."""
    with exit_on_error():
        job = make_client(client).jobs.get(job_id)
    print_json(job) if json_ else console.print(job_detail(job))


@app.command()
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the job ends")
    ] = False,
    worker: Annotated[int, typer.Option(help="which worker")] = 0,
    client: ClientOpt = None,
) -> None:
    """Print a worker's log."""
    kaon = make_client(client)
    with exit_on_error():
        if follow:
            for text in kaon.jobs.follow(job_id, worker):
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            sys.stdout.write(kaon.jobs.logs(job_id, worker))


@app.command()
def cancel(
    job_id: str,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="ask, and return while workers stop")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Cancel a job: SIGTERM to every worker, SIGKILL after the grace period. Waits until
    the job is cancelled (its workers gone) unless -d, so what it prints is the end state.
    """
    kaon = make_client(client)
    with exit_on_error():
        job = kaon.jobs.cancel(job_id)
        if not detach and not job.is_done():
            with err.status(f"{job.id}: stopping workers (SIGTERM, then SIGKILL) ..."):
                job = kaon.jobs.wait(job.id, timeout=timeout)
    print_json(job) if json_ else err.print(_cancel_outcome(job))


def _cancel_outcome(job: JobView) -> str:
    """One line that matches the job's state now: never "stopping" for a cancelled job."""
    if job.status is JobStatus.CANCELLED:
        return f"job {job.id} {status_text(job.status)}"
    if job.is_done():
        return f"job {job.id} {status_text(job.status)}: {job.message}"
    return f"job {job.id} {status_text(job.status)}: stopping its workers, then cancelled"


@app.command()
def wait(
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Wait until a job ends; exit 0 only if it succeeded."""
    with exit_on_error(), err.status(f"waiting for {job_id} ..."):
        job = make_client(client).jobs.wait(job_id, timeout=timeout)
    print_json(job) if json_ else err.print(
        f"job {job.id} {status_text(job.status)}: {job.message}"
    )
    raise typer.Exit(0 if job.status is JobStatus.SUCCEEDED else EXIT_FAILED)


@app.command()
def metrics(
    job_id: str,
    name: Annotated[str | None, typer.Option(help="only this metric")] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show the metrics a job reported with kaon.report(). A --name the job never
    reported is an error (exit 3) that lists the names it did report: an empty table
    would look like a job that reported nothing."""
    kaon = make_client(client)
    with exit_on_error():
        points = kaon.jobs.metrics(job_id, name)
        if name and not points:
            err.print(f"[red]error:[/] {_no_such_metric(kaon, job_id, name)}")
            raise typer.Exit(EXIT_NOT_FOUND)
    if json_:
        print_json(points)
    elif points:
        console.print(metrics_table(points))
    else:  # a table of headers only reads as a display bug
        err.print(f"job {job_id} has reported no metrics (a job sends them with kaon.report())")


@app.command()
def top(
    job_id: str,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="refresh until the job ends (Ctrl-C stops)")
    ] = False,
    every: Annotated[float, typer.Option(help="seconds between refreshes with --watch")] = 2.0,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show each worker's CPU, memory and GPU use (its latest sample; the series is in
    --json). Workers are sampled every few seconds while they run; usage stays readable
    for a while after the job ends."""
    kaon = make_client(client)
    with exit_on_error():
        usage = kaon.jobs.usage(job_id)
        if json_:
            print_json(usage)
            return
        if not watch:
            _print_usage(usage)
            return
        from rich.live import Live

        with Live(usage_table(usage), console=console, auto_refresh=False) as live:
            while not usage.status.is_terminal():
                time.sleep(every)
                usage = kaon.jobs.usage(usage.job_id)
                live.update(usage_table(usage), refresh=True)


def _print_usage(usage: JobUsage) -> None:
    if usage.workers:
        console.print(usage_table(usage))
    else:  # a table of headers only reads as a display bug
        err.print(f"job {usage.job_id} has no usage yet (workers send it every few seconds)")


def _no_such_metric(kaon: Client, job_id: str, name: str) -> str:
    reported = sorted({p.name for p in kaon.jobs.metrics(job_id)})
    names = ", ".join(reported) if reported else "none yet"
    return f"job {job_id} reported no metric named {name!r}; it reported: {names}"
