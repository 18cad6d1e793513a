"""The supervisor of one worker: started by the local executor, outlives the server.

It runs as ``python _shim.py WORKER_DIR`` in a session of its own, with only the standard
library and psutil, so it survives a crash of the control plane. It starts in as few
milliseconds as Python allows: it imports neither ``subprocess`` nor ``pathlib`` (27 ms
of a 50 ms start on a busy machine), but forks and execs the worker itself, and imports
psutil only when it first checks memory. It:

- fetches the values of the job's secrets from the control plane with the job's token,
  when the launch names variables that hold secrets (``KAON_SECRET_ENV``), and hands them
  to the worker's environment only: no value is ever written into the worker's folder;
- takes the job's token (and a replica's own credential) from ``WORKER_DIR/handed.json``
  and deletes that file, so no file holds them once the worker runs (``launch.json`` never
  does);
- starts the worker's command in a process group of its own, output into ``WORKER_DIR/log``
  (0600), as the workspace's own user when the launch names a ``uid`` (a root control
  plane with ``KAON_WORKER_UIDS``), inside bubblewrap when the launch names a ``sandbox``
  (`kaon.executors.sandbox`: then bwrap runs as root and the user is taken on inside it);
- enforces the worker's memory limit by watching the resident memory of the whole process
  tree, and stops an offender with a reason a user can read;
- on SIGTERM forwards SIGTERM to the group, waits the grace period, then sends SIGKILL;
- samples the worker's resource usage (CPU, memory, GPUs) every few seconds and sends it
  to the control plane with the job's token, never making the worker wait (`_usage`);
- writes the true exit status to ``WORKER_DIR/exit.json`` (atomically) when the worker ends,
  so a control plane that restarts later still learns how the worker ended.

On a Ray node it is started out of the node agent's process tree (so it outlives the
agent), and it watches ``watch_pid`` (the node's raylet): when the node leaves the
cluster, the worker is stopped at once and reported lost, so it cannot run on while its
job is placed again elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

MEMORY_CHECK_S = 0.2
HANDED_FILE = "handed.json"  # kaon.executors.local.HANDED_FILE
SECRET_ENV = "KAON_SECRET_ENV"  # kaon.core.secrets.SECRET_ENV_MARKER
SECRET_FILES = "KAON_SECRET_FILES"  # kaon.core.secrets.SECRET_FILES_MARKER
IN_MEMORY = "/dev/shm"  # tmpfs: a secret file never reaches a disk
SECRETS_WAIT_S = 60.0  # a control plane that restarts meanwhile is waited for this long


class SecretsUnavailable(Exception):
    """The job's secrets could not be fetched; the worker is not started."""


def api_tls_context(env: dict[str, str]) -> Any:
    """The context that verifies a control plane serving TLS by the certificate in the
    launch's environment (``KAON_CA_PEM``, as in `kaon.core.tls.client_context`); the
    system's trust store when there is none."""
    import ssl

    context = ssl.create_default_context(cadata=env.get("KAON_CA_PEM") or None)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned leaf ends the chain
    return context


def _fetch_secrets(env: dict[str, str], stopped: Callable[[], bool]) -> dict[str, str]:
    """Variable -> value for the job's secrets, asked of the control plane with the job's
    token (retried while the control plane cannot be reached, not when it refuses, and
    not once the worker was asked to stop: then nothing, since it will not start)."""
    import urllib.error
    import urllib.request

    url = f"{env['KAON_API_URL'].rstrip('/')}/api/v1/jobs/{env['KAON_JOB_ID']}/secrets"
    headers = {"Authorization": f"Bearer {env['KAON_JOB_TOKEN']}"}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # straight there
        urllib.request.HTTPSHandler(context=api_tls_context(env)),
    )
    deadline, delay = time.monotonic() + SECRETS_WAIT_S, 0.2
    while not stopped():
        try:
            with opener.open(request, timeout=10) as response:
                values: dict[str, str] = json.load(response)["env"]
                return values
        except urllib.error.HTTPError as e:
            if e.code < 500 or time.monotonic() > deadline:
                detail = e.read().decode(errors="replace")[:500]
                raise SecretsUnavailable(f"the control plane answered {e.code}: {detail}") from e
        except (OSError, ValueError, KeyError) as e:
            if time.monotonic() > deadline:
                raise SecretsUnavailable(f"the control plane cannot be reached: {e}") from e
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    return {}


def _with_secrets(
    spec: dict[str, Any], stopped: Callable[[], bool], folders: list[str]
) -> dict[str, Any]:
    """The launch spec with the secrets' values in its env (in memory only), or, for the
    variables the launch names in ``KAON_SECRET_FILES``, the paths of files that hold them
    (in a folder added to `folders`, for the caller to remove when the worker ends)."""
    env: dict[str, str] = dict(spec["env"])
    names = env.pop(SECRET_ENV, "")
    as_files = set(filter(None, env.pop(SECRET_FILES, "").split(",")))
    if not names:
        return spec
    wanted = set(names.split(","))
    values = {k: v for k, v in _fetch_secrets(env, stopped).items() if k in wanted}
    if as_files & values.keys():
        folder = _secret_folder(spec.get("uid"))
        folders.append(folder)
        for var in as_files & values.keys():
            values[var] = _secret_file(folder, var, values[var], spec.get("uid"))
        spec = _shown_in_sandbox(spec, folder)
    env.update(values)
    return {**spec, "env": env}


def _shown_in_sandbox(spec: dict[str, Any], folder: str) -> dict[str, Any]:
    """The launch spec with `folder` bound read-only into the worker's sandbox, if it has
    one: after the sandbox's own tmpfs over /dev/shm, so it shows through."""
    sandbox = spec.get("sandbox")
    if not sandbox:
        return spec
    argv = [*sandbox["argv"], "--ro-bind", folder, folder]
    return {**spec, "sandbox": {**sandbox, "argv": argv}}


def _secret_folder(uid: int | None) -> str:
    """A folder only the worker's user can enter, in memory where there is a tmpfs. The
    supervisor removes it when the worker ends (one killed outright leaves it to the
    tmpfs, which a reboot clears)."""
    import tempfile

    root = IN_MEMORY if os.path.isdir(IN_MEMORY) else None
    folder = tempfile.mkdtemp(prefix="kaon-secrets-", dir=root)  # 0700
    if uid is not None:
        os.chown(folder, int(uid), int(uid))
    return folder


def _secret_file(folder: str, var: str, value: str, uid: int | None) -> str:
    """Write one value (0400, the worker's user) and answer its path."""
    path = os.path.join(folder, var)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "w") as f:
        f.write(value)
    if uid is not None:
        os.chown(path, int(uid), int(uid))
    return path


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _tree_rss(pid: int) -> int:
    import psutil  # on first use: a worker that ends within one check never pays for it

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(code: int, sandboxed: bool = False) -> tuple[int, str | None]:
    """Exit code as a shell reports it (128+N for signal N) and a reason for signals.
    bwrap reports its worker's death by signal N as status 128+N: from a sandbox, such a
    status reads as that signal."""
    if sandboxed and 128 < code < 128 + signal.NSIG:
        code = 128 - code
    if code >= 0:
        return code, None
    sig = -code
    try:
        name = signal.Signals(sig).name
    except ValueError:  # pragma: no cover
        name = f"signal {sig}"
    return 128 + sig, f"killed by {name}"


def _uid_hint(error: OSError, uid: object) -> str:
    """What to do when a worker run as its workspace's own user may not run its command:
    a program under a folder closed to other users (``/root/...``) is the usual cause."""
    if uid is None or error.errno not in (errno.EACCES, errno.EPERM):
        return ""
    return (
        f" (the job runs as uid {uid}, its workspace's own user: the command and its "
        "interpreter must be where every user may run them; KAON_WORKER_UIDS=off runs "
        "jobs as the control plane's own user instead)"
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _argv(spec: dict[str, Any]) -> list[str]:
    """What the supervisor executes: the worker's command, or bwrap with the worker's
    view of the file system, then the step that takes on its user, then the command."""
    sandbox = spec.get("sandbox")
    if not sandbox:
        return list(spec["command"])
    return [*sandbox["argv"], "--", *sandbox["then"], *spec["command"]]


def _check_runnable(spec: dict[str, Any]) -> None:
    """Inside a sandbox a command that cannot be found fails in there, where no error
    reaches the supervisor: look for it first, so it reads "cannot start" as without."""
    program = spec["command"][0]
    where = os.path.join(spec["cwd"], program) if "/" in program else None
    found = where if where else shutil.which(program, path=spec["env"].get("PATH", os.defpath))
    if not found or not os.path.isfile(found):
        raise OSError(2, f"No such file or directory: {program!r}")


def _spawn(spec: dict[str, Any], log_fd: int) -> int:
    """Fork and exec the worker in a process group of its own, output into the log.
    Raises OSError (as ``subprocess`` would) when the command cannot be started: the
    child reports a failed exec through a close-on-exec pipe.

    In a sandbox, bwrap itself ignores SIGTERM (the worker gets it back inside): bwrap
    killed by the stop's SIGTERM would take the worker down at once, with no grace."""
    sandboxed = bool(spec.get("sandbox"))
    if sandboxed:
        _check_runnable(spec)
    argv = _argv(spec)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec
        try:
            os.close(read_end)
            os.setpgid(0, 0)
            uid = spec.get("uid")
            if sandboxed:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            elif uid is not None:  # the workspace's own user: no group, nothing of root's
                os.setgroups([])
                os.setgid(int(uid))
                os.setuid(int(uid))
            os.chdir(spec["cwd"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.execvpe(argv[0], argv, spec["env"])
        except OSError as e:
            os.write(write_end, f"{e.errno}:{e.strerror}".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    try:
        os.setpgid(pid, pid)  # no race with a kill before the child's own setpgid
    except OSError:
        pass  # it exec'd already (the group is set) or it is gone
    failure = os.read(read_end, 4096)
    os.close(read_end)
    if failure:
        os.waitpid(pid, 0)
        errno, _, why = failure.decode().partition(":")
        raise OSError(int(errno), why)
    return pid


def _start_usage(child_pid: int, env: dict[str, str]) -> Any:
    """The worker's usage reporter (`_usage.UsageReporter`), or None when it has nowhere to
    report or cannot start: usage is an extra, the worker runs the same without it."""
    try:
        from kaon.executors._usage import UsageReporter  # loaded already under the spawner

        return UsageReporter.start(child_pid, env)
    except Exception:
        return None


def _with_handed(worker_dir: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The launch spec with the credentials the executor left beside it (the job's
    token and a replica's credential, kept out of launch.json) in its env; their file is
    deleted as it is read, so they live on only in the worker's environment."""
    path = os.path.join(worker_dir, HANDED_FILE)
    try:
        handed = _read_json(path)
    except FileNotFoundError:
        return spec
    os.unlink(path)
    return {**spec, "env": {**spec["env"], **handed}}


def main(worker_dir: str) -> int:
    # A stop may come at any moment, even before the worker exists (a cancel while the
    # secrets are fetched, or before this process got to install a handler on a busy
    # machine): SIGTERM's default action would kill the supervisor with no exit status
    # written, and the worker would read as lost. So the handler comes first; it stops
    # the worker once there is one.
    state: dict[str, Any] = {"kill_at": None, "reason": None, "lost": False, "child": None}
    grace = {"s": 10.0}

    def on_term(_sig: int, _frame: Any) -> None:
        if state["kill_at"] is None:
            stop_file = os.path.join(worker_dir, "stop.json")
            grace_s = grace["s"]
            if os.path.exists(stop_file):
                grace_s = float(_read_json(stop_file).get("grace_s", grace_s))
            state["kill_at"] = time.monotonic() + grace_s
            if state["child"] is not None:
                _killpg(state["child"], signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    spec = _with_handed(worker_dir, _read_json(os.path.join(worker_dir, "launch.json")))
    grace["s"] = float(spec.get("grace_s", 10.0))
    appending = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    log_fd = os.open(os.path.join(worker_dir, "log"), appending, 0o600)
    log = open(log_fd, "ab", buffering=0)  # 0600: a worker of another user cannot read it
    folders: list[str] = []
    try:
        return _supervise(worker_dir, spec, state, log, folders)
    finally:
        _remove(folders)  # when the worker could not start; done already when it ran


def _remove(folders: list[str]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    folders.clear()


def _supervise(
    worker_dir: str, spec: dict[str, Any], state: dict[str, Any], log: Any, folders: list[str]
) -> int:
    """Fetch the secrets, start the worker, watch it until it ends, write its exit."""
    watch_pid = spec.get("watch_pid")
    memory_limit = int(spec.get("memory", 0))
    try:
        spec = _with_secrets(spec, lambda: state["kill_at"] is not None, folders)
    except SecretsUnavailable as e:
        log.write(f"kaon: cannot read the job's secrets: {e}\n".encode())
        exit_path = os.path.join(worker_dir, "exit.json")
        _write_json(exit_path, {"exit_code": 1, "reason": f"cannot read its secrets: {e}"})
        return 0
    if state["kill_at"] is not None:
        exit_path = os.path.join(worker_dir, "exit.json")
        _write_json(exit_path, {"exit_code": None, "reason": "stopped before it started"})
        return 0
    try:
        child_pid = _spawn(spec, log.fileno())
    except OSError as e:
        why = f"{e}{_uid_hint(e, spec.get('uid'))}"
        log.write(f"kaon: cannot start {spec['command'][0]!r}: {why}\n".encode())
        exit_path = os.path.join(worker_dir, "exit.json")
        _write_json(exit_path, {"exit_code": 127, "reason": f"cannot start: {why}"})
        return 0
    state["child"] = child_pid
    if state["kill_at"] is not None:  # asked to stop while the worker was being started
        _killpg(child_pid, signal.SIGTERM)
    _write_json(os.path.join(worker_dir, "child.json"), {"pid": child_pid})
    usage = _start_usage(child_pid, spec["env"])

    done = threading.Event()
    status: dict[str, int] = {}

    def wait_child() -> None:
        _, raw = os.waitpid(child_pid, 0)
        status["code"] = os.waitstatus_to_exitcode(raw)
        done.set()

    threading.Thread(target=wait_child, daemon=True).start()
    while not done.wait(MEMORY_CHECK_S):
        if state["kill_at"] is not None and time.monotonic() >= state["kill_at"]:
            _killpg(child_pid, signal.SIGKILL)
        if watch_pid and not state["lost"] and _gone(int(watch_pid)):
            state["lost"] = True
            state["reason"] = "lost: its node left the Ray cluster"
            log.write(f"\nkaon: {state['reason']}\n".encode())
            _killpg(child_pid, signal.SIGKILL)
        if memory_limit and state["reason"] is None:
            used = _tree_rss(child_pid)
            if used > memory_limit:
                state["reason"] = (
                    f"out of memory: the worker used {_gib(used)}, over its limit of "
                    f"{_gib(memory_limit)}; ask for more with resources.memory"
                )
                log.write(f"\nkaon: {state['reason']}\n".encode())
                _killpg(child_pid, signal.SIGKILL)
    _killpg(child_pid, signal.SIGKILL)  # leftovers of the group
    code, reason = _describe(status["code"], sandboxed=bool(spec.get("sandbox")))
    ended = {"exit_code": None if state["lost"] else code, "reason": state["reason"] or reason}
    if state["lost"]:
        ended["lost"] = True
    elif usage is not None:
        usage.close()  # the last samples, while the attempt's token is still good
    _remove(folders)  # the secret files go before the job reads as ended
    _write_json(os.path.join(worker_dir, "exit.json"), ended)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
