"""`kaon deploy ...` and `kaon serve`: models served from the pool behind the gateway."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.status import Status

from kaon.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_TIMEOUT,
    ClientOpt,
    JsonOpt,
    exit_on_error,
    make_client,
)
from kaon.cli.render import console, err, print_json, rows_table
from kaon.core.deployments import DeploymentView, ReplicaView
from kaon.core.errors import KaonError
from kaon.core.jobs import JobStatus
from kaon.core.replicas import ReplicaStatus
from kaon.sdk.client import Client
from kaon.sdk.config import load_config
from kaon.sdk.deployments import DeploymentFailedError, gateway_path

app = typer.Typer(help="Serve models: deployments behind the gateway.", no_args_is_help=True)


def _spec(
    file: Path | None,
    service: str | None,
    from_job: str | None,
    min_replicas: int | None,
    max_replicas: int | None,
    cpu: float | None,
    memory: str | None,
    gpus: int | None,
    public: bool | None,
    env: list[str] | None,
    secret_env: list[str] | None = None,
) -> tuple[dict[str, Any], Path | None]:
    data: dict[str, Any] = {}
    path = None
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{file} must hold a mapping of deployment fields")
        data = loaded
        if "path" in data:
            path = file.parent / str(data.pop("path"))
    if service:
        data["service"] = service
    if from_job:
        data["from_job"] = from_job
    resources = dict(data.get("resources") or {})
    for key, value in (("cpu", cpu), ("memory", memory), ("gpus", gpus)):
        if value is not None:
            resources[key] = value
    if resources:
        data["resources"] = resources
    scaling = dict(data.get("autoscaling") or {})
    if min_replicas is not None:
        scaling["min_replicas"] = min_replicas
    if max_replicas is not None:
        scaling["max_replicas"] = max_replicas
    if scaling:
        data["autoscaling"] = scaling
    if public is not None:
        data["public"] = public
    for pair in env or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env expects KEY=VALUE, got {pair!r}")
        data.setdefault("env", {})[key] = value
    for pair in secret_env or []:
        key, sep, name = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--secret expects VAR=SECRET_NAME, got {pair!r}")
        data.setdefault("env", {})[key] = {"secret": name}
    return data, path


FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="deployment spec YAML")]
PathOpt = Annotated[
    Path | None, typer.Option("--path", help="folder to upload (the service code)")
]
ServiceOpt = Annotated[str | None, typer.Option(help="module:Class of a kaon.Service")]
FromJobOpt = Annotated[
    str | None, typer.Option("--from-job", help="serve a kaon.train job's model")
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="serve a registered model: NAME:VERSION, NAME:ALIAS or NAME"),
]
LlmOpt = Annotated[
    bool,
    typer.Option(
        "--llm", help="serve the model as an OpenAI-compatible LLM (kaon.llm.ready:ModelDirLLM)"
    ),
]
HfPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--hf-path", help="with --llm: register this Hugging Face folder as a model and serve it"
    ),
]
LLM_SERVICE = "kaon.llm.ready:ModelDirLLM"
MinOpt = Annotated[int | None, typer.Option("--min", help="fewest replicas (0: scale to zero)")]
MaxOpt = Annotated[int | None, typer.Option("--max", help="most replicas")]
CpuOpt = Annotated[float | None, typer.Option(help="CPUs per replica")]
MemOpt = Annotated[str | None, typer.Option(help="memory per replica, e.g. 2Gi")]
GpuOpt = Annotated[int | None, typer.Option(help="GPUs per replica")]
PublicOpt = Annotated[
    bool | None, typer.Option("--public/--private", help="callable without a token")
]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret", help="VAR=SECRET_NAME: the variable gets the workspace's secret, repeatable"
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option(help="seconds to wait before giving up (exit code 6)", min=0)
]
LOG_TAIL = 20  # lines of a crashed replica's log shown when a wait fails: its traceback


def _check_source(data: dict[str, Any]) -> None:
    """Exactly one of service and from_job (or a registered model), checked before
    anything is uploaded: the server checks too, but only after the upload, and in the
    words of its model."""
    has_service, has_job = bool(data.get("service")), bool(data.get("from_job"))
    if has_service and has_job:
        _input_error("give either --service or --from-job, not both")
    if not has_service and not has_job and not data.get("model"):
        _input_error(
            "give --service module:Class to serve a kaon.Service from --path, "
            "or --from-job JOB to serve a job's model, "
            "or --model NAME:VERSION to serve a registered one"
        )


def _llm_source(
    kaon: Client, name: str, data: dict[str, Any], hf_path: Path | None, json_: bool
) -> None:
    """`--llm`: the ready-made LLM service over a registered model version. A job's
    checkpoints or a Hugging Face folder are registered first, as model `name`."""
    sources = [s for s in (data.get("from_job"), data.get("model"), hf_path) if s]
    if len(sources) != 1 or data.get("service"):
        _input_error("--llm needs exactly one of --from-job, --model and --hf-path")
    if hf_path is not None:
        if not hf_path.is_dir():
            _input_error(f"--hf-path {hf_path} is not a folder")
        with err.status(f"uploading {hf_path} as model {name} ..."):
            version = kaon.models.push(name, hf_path)
        data["model"] = version.ref
    elif data.get("from_job"):
        version = kaon.models.register(name, from_job=data.pop("from_job"))
        data["model"] = version.ref
    if not json_:
        err.print(f"serving model {data['model']}", highlight=False)
    data["service"] = LLM_SERVICE


def _input_error(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


@app.command()
def create(
    name: str,
    file: FileOpt = None,
    path: PathOpt = None,
    service: ServiceOpt = None,
    from_job: FromJobOpt = None,
    model: ModelOpt = None,
    llm: LlmOpt = False,
    hf_path: HfPathOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    gpus: GpuOpt = None,
    public: PublicOpt = None,
    env: EnvOpt = None,
    secret_env: SecretOpt = None,
    wait: Annotated[bool, typer.Option(help="wait until a replica is ready")] = True,
    timeout: TimeoutOpt = 300.0,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deploy a kaon.Service from a folder, or the model of a kaon.train job.

    kaon deploy create clf --path examples/binary_classifier --service serve:Classifier
    kaon deploy create clf --from-job j-3f9c2a7b1d04
    kaon deploy create clf --model clf:production       # follows the alias
    kaon deploy create chat --llm --hf-path ./tiny-llama
    kaon deploy create clf --model clf:production --secret API_KEY=serving-key
    """
    data, file_path = _spec(
        file,
        service,
        from_job,
        min_replicas,
        max_replicas,
        cpu,
        memory,
        gpus,
        public,
        env,
        secret_env,
    )
    if model:
        data["model"] = model
    if hf_path is not None and not llm:
        _input_error("--hf-path serves a Hugging Face folder as an LLM: add --llm")
    if not llm:
        _check_source(data)
    folder = path or file_path
    if folder is None and "from_job" not in data and "model" not in data and not llm:
        folder = Path(".")
    kaon = make_client(client)
    with exit_on_error():
        if llm:
            _llm_source(kaon, name, data, hf_path, json_)
        with err.status("uploading and creating ..."):
            view = kaon.deployments.create(name, path=folder, spec=data)
        _warn(view)
        if wait:
            view = _wait(kaon, view, timeout, json_)
    _show(view, json_)


@app.command()
def update(
    name: str,
    file: FileOpt = None,
    path: PathOpt = None,
    service: ServiceOpt = None,
    from_job: FromJobOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu: CpuOpt = None,
    memory: MemOpt = None,
    gpus: GpuOpt = None,
    public: PublicOpt = None,
    env: EnvOpt = None,
    secret_env: SecretOpt = None,
    wait: Annotated[
        bool, typer.Option(help="wait until the new generation is rolled out and ready")
    ] = False,
    timeout: TimeoutOpt = 300.0,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a deployment; replicas roll one at a time with no failed request."""
    kaon = make_client(client)
    with exit_on_error():
        changes, file_path = _spec(
            file,
            service,
            from_job,
            min_replicas,
            max_replicas,
            cpu,
            memory,
            gpus,
            public,
            env,
            secret_env,
        )
        if changes.get("service") and changes.get("from_job"):
            _input_error("give either --service or --from-job, not both")
        current = kaon.deployments.get(name).spec.model_dump(exclude_none=True)
        if path is not None:
            current.pop("snapshot", None)
        if "service" in changes:
            current.pop("from_job", None)
        if "from_job" in changes:
            current.pop("service", None)
            current.pop("model", None)
        current.update(changes)
        view = kaon.deployments.update(name, current, path=path or file_path)
        _warn(view)
        if wait:
            view = _wait(kaon, view, timeout, json_)
    _show(view, json_)


# --- waiting ----------------------------------------------------------------------------


def _wait(kaon: Client, created: DeploymentView, timeout: float, json_: bool) -> DeploymentView:
    """Wait for the new generation, saying what it waits for; stop at the first crash
    with the crashed replica's traceback and exit 1. The create or update response's
    warnings stay on the view returned, so --json still carries them."""
    name = created.name
    try:
        with err.status(f"waiting for {name} ...") as spinner:
            view = kaon.deployments.wait_ready(name, timeout, _Progress(spinner))
    except DeploymentFailedError as e:
        _failed(kaon, e, json_)
    except TimeoutError as e:  # an OSError, which exit_on_error would call bad input
        err.print(f"[red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    return view.model_copy(update={"warnings": created.warnings})


class _Progress:
    """Prints to stderr, a line each time it changes, the deployment's status and each
    replica's state and why it is there (its job's waiting reason while it queues).
    Lines, not only the spinner, so a log or a pipe shows a start that is stuck."""

    def __init__(self, spinner: Status) -> None:
        self.spinner = spinner
        self.said: dict[str, str] = {}

    def __call__(self, view: DeploymentView) -> None:
        self.spinner.update(f"waiting for {view.name}: {view.status} ...")
        lines = [(view.name, f"{view.name}: {view.status}, {_deployment_info(view)}")]
        lines += [(r.job_id, _replica_line(r)) for r in _waited_for(view)]
        for key, line in lines:
            if self.said.get(key) != line:
                self.said[key] = line
                err.print(line, markup=False, highlight=False, soft_wrap=True)


def _waited_for(view: DeploymentView) -> list[ReplicaView]:
    """The replicas a wait is about: the current generation's, and old ones still up."""
    return [
        r for r in view.replicas if r.generation == view.generation or not r.state.is_terminal()
    ]


def _replica_line(r: ReplicaView) -> str:
    return f"  replica {r.job_id} (generation {r.generation}): {r.state}, {_replica_info(r)}"


def _failed(kaon: Client, error: DeploymentFailedError, json_: bool) -> NoReturn:
    """The crash, the last lines of the crashed replica's log (its traceback), and where
    the whole log is; exit 1."""
    name, replica = error.view.name, error.replica.job_id
    err.print(f"[red]error:[/] {error}", soft_wrap=True)
    err.print(f"last {LOG_TAIL} lines of replica {replica}'s log:")
    err.print(_log_tail(kaon, name, replica), markup=False, highlight=False, soft_wrap=True)
    err.print(f"[dim]the whole log: kaon deploy logs {name} --replica {replica}[/]")
    if json_:
        print_json(error.view)
    raise typer.Exit(EXIT_FAILED)


def _log_tail(kaon: Client, name: str, replica: str) -> str:
    try:
        text = kaon.deployments.logs(name, replica)
    except KaonError as e:
        return f"(its log could not be read: {e})"
    return "\n".join(text.rstrip("\n").splitlines()[-LOG_TAIL:]) or "(its log is empty)"


# --- showing ----------------------------------------------------------------------------


_STARTING_WHY = {
    JobStatus.QUEUED: "queued for the scheduler",
    JobStatus.STARTING: "its process is being launched",
    JobStatus.RUNNING: "setup() runs; waiting for its first passing health check",
}


def _replica_info(r: ReplicaView) -> str:
    """Why a replica is where it is: the scheduler's reason while its job waits for
    resources, what a starting one is doing, else its job's message."""
    if r.waiting_reason:
        return f"waiting for resources: {r.waiting_reason}"
    if r.state is ReplicaStatus.STARTING and r.job_status in _STARTING_WHY:
        return _STARTING_WHY[r.job_status]
    return r.message


def _deployment_info(view: DeploymentView) -> str:
    """The deployment's message, and why its replicas wait when some do: otherwise a
    deployment on a full pool reads 'starting' with no reason anywhere but its jobs."""
    waiting = [r for r in view.replicas if r.waiting_reason]
    if not waiting:
        return view.message
    count = "1 replica waits" if len(waiting) == 1 else f"{len(waiting)} replicas wait"
    return f"{view.message}; {count} for resources: {waiting[0].waiting_reason}"


def _warn(view: DeploymentView) -> None:
    for warning in view.warnings:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


@app.command("list")
def list_(client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """Deployments in the workspace, with their replicas."""
    with exit_on_error():
        views = make_client(client).deployments.list()
    if json_:
        print_json(views)
        return
    gateway = load_config().gateway_url
    rows = [
        (
            v.name,
            v.status,
            f"{v.ready_replicas}/{v.desired_replicas}",
            str(v.generation),
            f"{gateway}{gateway_path(v)}/",
            _deployment_info(v),
        )
        for v in views
    ]
    console.print(rows_table(("NAME", "STATUS", "READY", "GEN", "URL", "INFO"), rows))


@app.command()
def get(name: str, client: ClientOpt = None, json_: JsonOpt = False) -> None:
    """One deployment, its replicas and why it is where it is."""
    with exit_on_error():
        view = make_client(client).deployments.get(name)
    _show(view, json_)


@app.command()
def logs(
    name: str,
    replica: Annotated[str | None, typer.Option(help="replica id (default: the newest)")] = None,
    client: ClientOpt = None,
) -> None:
    """A replica's log: setup() tracebacks and request errors land here."""
    with exit_on_error():
        sys.stdout.write(make_client(client).deployments.logs(name, replica))


@app.command()
def call(
    name: str,
    handler: Annotated[str, typer.Argument(help="the handler's path, e.g. predict")],
    body: Annotated[
        str, typer.Argument(help="the JSON body ('-': read it from standard input)")
    ] = "{}",
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Call a handler through the gateway with your token, and print its answer.

    kaon deploy call clf predict '{"inputs": [[0.5, -1.0]]}'

    Exit code 1 when the handler does not answer 2xx. Clients call the gateway itself
    (`kaon deploy token NAME` makes a token for them); this is the quick check.
    """
    text = sys.stdin.read() if body == "-" else body
    try:
        payload = json.loads(text)
    except ValueError as e:
        _input_error(f"the body is not JSON: {e}")
    kaon = make_client(client)
    with exit_on_error():
        reply = kaon.deployments.call(name, handler, payload)
    if json_:
        print_json(reply)
    else:
        console.print(reply.body, markup=False, highlight=False, soft_wrap=True)
        err.print(f"{reply.status} in {reply.latency_ms:.1f} ms", markup=False, highlight=False)
    if not 200 <= reply.status < 300:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def delete(name: str, client: ClientOpt = None) -> None:
    """Stop every replica and remove the deployment."""
    with exit_on_error():
        make_client(client).deployments.delete(name)
    err.print(f"deleting {name}: replicas are draining")


@app.command()
def token(
    name: str,
    token_name: Annotated[str, typer.Option("--name", help="a label for the token")] = "token",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print the token only: TOKEN=$(kaon ... -q)")
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="list its tokens (names and prefixes) instead")
    ] = False,
    revoke: Annotated[
        str | None, typer.Option("--revoke", help="revoke its token with this id or name")
    ] = None,
    client: ClientOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token that can call only this deployment (shown once); it works at once
    (a gateway that does not know a token yet fetches its route table before refusing it).
    With --list, its tokens; with --revoke, revoke one (the gateway refuses it within a
    route poll).

    TOKEN=$(kaon deploy token classifier -q)
    """
    if list_ or revoke is not None:
        _list_or_revoke_tokens(name, revoke, client, json_)
        return
    with exit_on_error():
        created = make_client(client).deployments.create_token(name, token_name)
    if json_:
        print_json(created)
    elif quiet:
        print(created.token)
    else:
        console.print(f"token for {name}: [bold]{created.token}[/]")


def _list_or_revoke_tokens(name: str, revoke: str | None, client: str | None, json_: bool) -> None:
    with exit_on_error():
        deployments = make_client(client).deployments
        if revoke is not None:
            revoked = deployments.revoke_token(name, revoke)
        else:
            tokens = deployments.list_tokens(name)
    if revoke is not None:
        if json_:
            print_json(revoked)
        else:
            console.print(f"revoked token {revoked.name} ({revoked.id}) of {name}")
        return
    if json_:
        print_json(tokens)
        return
    rows = [
        (t.id, t.name, t.prefix + "...", "revoked" if t.revoked_at else "active") for t in tokens
    ]
    console.print(rows_table(("ID", "NAME", "PREFIX", "STATE"), rows))


def _auth_hint(view: DeploymentView) -> str:
    """How to call it, including where a token comes from, which a first call needs."""
    if view.spec.public:
        return " (public: no token needed)"
    return f" with 'Authorization: Bearer $TOKEN', after TOKEN=$(kaon deploy token {view.name} -q)"


def _show(view: DeploymentView, json_: bool) -> None:
    if json_:
        print_json(view)
        return
    console.print(f"[bold]{view.name}[/] {view.status}: {_deployment_info(view)}")
    gateway = load_config().gateway_url
    call = f"  call: POST {gateway}{gateway_path(view)}/<handler>{_auth_hint(view)}"
    console.print(call, highlight=False, soft_wrap=True)  # a command to copy: never broken
    rows = [
        (r.job_id, str(r.generation), r.state, r.url or "-", str(r.pid or "-"), _replica_info(r))
        for r in view.replicas
    ]
    if rows:
        console.print(rows_table(("REPLICA", "GEN", "STATE", "URL", "PID", "INFO"), rows))
    if view.hidden_replicas:
        console.print(f"  ({view.hidden_replicas} older ended replica(s) not shown)")


def serve(
    path: Annotated[Path, typer.Argument(help="folder with the service code")] = Path("."),
    service: Annotated[str, typer.Option(help="module:Class of a kaon.Service")] = "",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
) -> None:
    """Run one replica of a service locally, for development (no control plane)."""
    if not service:
        err.print("[red]error:[/] give --service module:Class")
        raise typer.Exit(EXIT_INPUT)
    from kaon.serving.runtime import serve as run_replica

    raise typer.Exit(run_replica(str(path), service, host, port))
