"""`make demo`: start Kaon, train the seed classifier as a Kaon job, show its progress,
log and accuracy, and leave the control plane running.

Ports: ``make demo PORT=8570 GATEWAY_PORT=8571``, or ``KAON_PORT`` / ``KAON_GATEWAY_PORT``
in the environment, or ``scripts/demo.py --port 8570 --gateway-port 8571``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kaon.cli.common import EXIT_INPUT  # `kaon up`'s exit code for a port that is taken
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.sdk.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "binary_classifier"
EPOCHS = 10
console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("KAON_PORT") or "8470",
        help="control-plane port (KAON_PORT; default 8470)",
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        default=os.environ.get("KAON_GATEWAY_PORT") or "8471",
        help="gateway port (KAON_GATEWAY_PORT; default 8471)",
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    kaon_cli = str(Path(sys.executable).with_name("kaon"))
    ports = ["--port", str(args.port), "--gateway-port", str(args.gateway_port)]
    # The demo is one person's: its job runs as that person even when they are root (a
    # root control plane otherwise runs each workspace's jobs as a user of its own, which
    # needs a Python every user may run; docs/security.md).
    env = {"KAON_WORKER_UIDS": "off", **os.environ}
    code = subprocess.run([kaon_cli, "up", *ports], env=env).returncode
    if code == EXIT_INPUT:
        console.print("choose the demo's ports: make demo PORT=N GATEWAY_PORT=M", highlight=False)
    if code:
        return code
    config = load_config()
    client = Client(config.url, token=config.token)
    spec = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    spec.pop("workdir", None)
    console.rule("[bold]the seed classifier, trained as a Kaon job")
    with console.status("uploading examples/binary_classifier and submitting ..."):
        job = client.jobs.submit(spec=spec, workdir=EXAMPLE)
    console.print(f"job [bold]{job.id}[/] submitted; log of worker 0:")
    log_thread = threading.Thread(target=_stream_log, args=(client, job.id), daemon=True)
    log_thread.start()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=EPOCHS, info="queued")
        while not (job := client.jobs.get(job.id)).is_done():
            losses = client.jobs.metrics(job.id, name="loss")
            info = f"loss {losses[-1].value:.4f}" if losses else job.status.value
            progress.update(task, completed=min(len(losses), EPOCHS), info=info)
            time.sleep(0.3)
        progress.update(
            task,
            completed=EPOCHS if job.status is JobStatus.SUCCEEDED else 0,
            info=job.status.value,
        )
    log_thread.join(timeout=5)
    if job.status is not JobStatus.SUCCEEDED:
        console.print(f"[red]the job {job.status.value}: {job.message}[/]")
        return 1
    accuracy = client.jobs.metrics(job.id, name="test_accuracy")
    console.rule()
    console.print(
        f"final test accuracy: [bold green]{accuracy_text(accuracy[-1].value)}[/]"
        if accuracy
        else "no accuracy reported"
    )
    console.print(f"control plane: [bold]{config.url}[/] (running; stop it with 'make down')")
    console.print(f"admin token:   [bold]{config.token}[/]")
    console.print("\nserve the trained model behind the gateway, with one command:")
    console.print(
        f"  .venv/bin/kaon deploy create classifier --from-job {job.id}", highlight=False
    )
    console.print("then call it with a token:")
    body = '{"x": [[0.5, -1.0]]}'
    console.print(
        f"  curl -s -H 'Authorization: Bearer {config.token}' -d '{body}' "
        f"{config.gateway_url}/classifier/predict",
        highlight=False,
        soft_wrap=True,
    )
    console.print("\nsee the job, its loss curve and its logs in the web console (sign in with")
    console.print("the admin token above):")
    page = f"{config.url}/console/#/jobs/{job.id}?ws={client.workspace}"
    console.print(f"  [bold]{page}[/]", highlight=False)
    return 0


def accuracy_text(value: float) -> str:
    """The accuracy as the job's own log line prints it a few lines above
    (``test accuracy: 0.96``, examples/binary_classifier/train.py): one number, one format."""
    return f"{value:.2f}"


def _stream_log(client: Client, job_id: str) -> None:
    for text in client.jobs.follow(job_id):
        for line in text.splitlines():
            console.print(f"  [dim]|[/] {line}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
