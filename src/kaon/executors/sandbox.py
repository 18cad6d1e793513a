"""A private view of the file system for a local worker, with bubblewrap (``bwrap``).

A worker run as its workspace's own uid (a root control plane with ``KAON_WORKER_UIDS``)
is kept out of what is not its own by file modes alone: it still sees every
world-readable file, shares ``/tmp`` with the machine, and sees every process in ``ps``.
Inside bubblewrap it sees instead:

- the machine's root read-only (``--ro-bind / /``), with a new ``/dev`` (GPU and RDMA
  devices bound back when the machine has them) and a ``/proc`` of its own pid namespace,
  so only its own processes;
- ``/tmp``, ``/var/tmp`` and ``/dev/shm`` empty and its own (a tmpfs each);
- the control plane's folders (``KAON_HOME``, the CLI's ``~/.kaon``) covered by an empty
  tmpfs, then its own folders bound back where they were: HOME and TMPDIR, its code
  (its working directory), its checkpoint and output folders (writable), its inputs'
  cache entries (read-only), and the folder of its secret files (read-only, added by the
  supervisor, which writes it only once the secrets are fetched).

Its network is the machine's: workers reach the control plane's API on loopback for
their secrets, metrics and usage. Memory stays watched by the supervisor; there are no
cgroups here.

Bubblewrap, not ``unshare``/``mount`` calls of our own: it is one small, audited C
program (what Flatpak runs every application in), packaged by Debian (``bubblewrap``),
and run by a root control plane it needs neither setuid nor unprivileged user
namespaces. Its mount order is its argument order, so the tmpfs that hide come first and
the binds that show a worker its own folders after them.

As root, bwrap runs as root and the worker's user is taken on *inside* the sandbox, by
``setpriv`` (util-linux) or, where it is missing, a few lines of the control plane's own
Python (`DROP_CODE`). Two things of bwrap's are worked around here:

- bwrap dies of SIGTERM, and its ``--die-with-parent`` then kills the sandbox at once:
  a worker would get no grace period. So bwrap is started with SIGTERM ignored, and the
  step that switches users (``env --default-signal=TERM`` before ``setpriv``, or
  `DROP_CODE`) gives the worker SIGTERM's default back. The supervisor's stop signals
  the whole process group as before: bwrap ignores SIGTERM, the worker gets it.
- bwrap reports a worker killed by signal N as exit status 128+N, as a shell does; the
  supervisor reads such a status from a sandbox as that signal (`_shim._describe`).

`KAON_SANDBOX` decides: ``auto`` (the default) uses bwrap for workers run as a workspace's
uid when bwrap is found and works on this machine (tried once per process); ``bwrap``
always uses it, and a launch fails, naming the setting, where it cannot; ``off`` never.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from kaon.core.errors import PermanentBackendError

SETTING = "KAON_SANDBOX"
MODES = ("auto", "bwrap", "off")
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # a tmpfs each, the worker's own
DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/infiniband")  # bound back if present
PASSAGE = "0711"  # a folder bwrap makes on the way to a bound one: pass, never list
PROBE_UID = 65534  # nobody: a root probe takes on a user as a worker would
PROBE_TIMEOUT_S = 10.0
# Inside the sandbox, as root: SIGTERM's default back (bwrap ran with it ignored), then
# the worker's user and group with no supplementary groups, then the worker's command.
# argv: UID (empty: stay who we are) COMMAND...
DROP_CODE = (
    "import os,signal,sys\n"
    "signal.signal(signal.SIGTERM,signal.SIG_DFL)\n"
    "u=sys.argv[1]\n"
    "if u:\n"
    " os.setgroups([]);os.setgid(int(u));os.setuid(int(u))\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)

log = logging.getLogger(__name__)


def parse_mode(text: str) -> str:
    """`KAON_SANDBOX`'s value, checked (a typo must not quietly mean "off")."""
    mode = text.strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{SETTING} must be one of {', '.join(MODES)}, not {text!r}")
    return mode


def wanted(mode: str, uid: int | None) -> bool:
    """Whether a worker should run in a sandbox: always (``bwrap``), never (``off``), or
    (``auto``) when it runs as a workspace's own uid, the multi-team setup it is for."""
    return mode == "bwrap" or (mode == "auto" and uid is not None)


@dataclass(frozen=True)
class SandboxPolicy:
    """How an executor sandboxes its workers: the mode, and the control plane's own paths
    that no worker may see (folders are covered by a tmpfs, files by ``/dev/null``)."""

    mode: str = "auto"
    hidden: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: str) -> SandboxPolicy:
        """`KAON_SANDBOX` from `env`; hidden: the control plane's home and the CLI's
        default home (its ``config.json`` holds a token) when that is another folder."""
        cli_home = os.path.join(os.path.expanduser("~"), ".kaon")
        hidden = (
            (home, cli_home) if os.path.realpath(cli_home) != os.path.realpath(home) else (home,)
        )
        return cls(parse_mode(env.get(SETTING, "auto")), hidden)


@dataclass(frozen=True)
class Tools:
    """The programs a sandbox is made with on this machine: bwrap, then the step that
    runs inside it before the worker's command (`then`, see `drop_args`)."""

    bwrap: str
    setpriv: str | None  # with `env`: the user switch; None: `python` runs DROP_CODE
    env: str | None
    python: str


@dataclass(frozen=True)
class WorkerView:
    """What one worker sees of the file system besides the read-only root."""

    cwd: str
    writable: tuple[str, ...]  # its own folders, bound back read-write
    readable: tuple[str, ...] = ()  # its inputs' cache entries, bound back read-only
    hidden_dirs: tuple[str, ...] = ()  # the control plane's folders: an empty tmpfs each
    hidden_files: tuple[str, ...] = ()  # the control plane's files outside those: /dev/null
    devices: tuple[str, ...] = ()  # device files (GPUs) bound back into the new /dev


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (by name: both are absolute)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _depth(path: str) -> int:
    return len(PurePosixPath(path).parts)


def bwrap_args(view: WorkerView) -> list[str]:
    """bwrap's options for `view`, in mount order (bwrap mounts in argument order): the
    read-only root, a new /dev and /proc, the devices; then every tmpfs (the private
    temporary folders, then the hidden folders they do not already cover, parents first);
    the hidden files; the folders on the way to a bound folder inside a tmpfs (made
    ``0711``: bwrap would make them ``0700`` root's, closed to the worker); and last the
    worker's own folders, parents first, so a bind is never covered by a later mount."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for device in sorted(map(_norm, view.devices)):
        args += ["--dev-bind", device, device]
    tmpfs: list[str] = []
    for folder in [*PRIVATE_TMP, *sorted(map(_norm, view.hidden_dirs), key=_depth)]:
        if not any(_inside(folder, t) for t in tmpfs):
            tmpfs.append(folder)
            args += ["--perms", "1777" if folder in PRIVATE_TMP else PASSAGE, "--tmpfs", folder]
    for file in sorted(map(_norm, view.hidden_files)):
        if not any(_inside(file, t) for t in tmpfs):
            args += ["--ro-bind", "/dev/null", file]
    binds = sorted(
        {
            **{_norm(p): "--ro-bind" for p in view.readable},
            **{_norm(p): "--bind" for p in view.writable},
        }.items(),
        key=lambda item: (_depth(item[0]), item[0]),
    )
    made: set[str] = set()
    for path, _ in binds:
        for way in _passages(path, tmpfs, {p for p, _ in binds}):
            if way not in made:
                made.add(way)
                args += ["--perms", PASSAGE, "--dir", way]
    for path, kind in binds:
        args += [kind, path, path]
    return [*args, "--unshare-pid", "--die-with-parent", "--chdir", _norm(view.cwd)]


def _passages(path: str, tmpfs: Iterable[str], bound: set[str]) -> list[str]:
    """The folders between a tmpfs and `path` (shallowest first) that the sandbox lacks:
    under a tmpfs nothing exists until made, and a folder bound itself is no passage."""
    ancestors = [str(p) for p in reversed(PurePosixPath(path).parents)]
    covering = [t for t in tmpfs if _inside(path, t) and t != path]
    if not covering:
        return []
    top = max(covering, key=_depth)
    return [
        a
        for a in ancestors
        if _inside(a, top) and a != top and not any(_inside(a, b) for b in bound)
    ]


def drop_args(tools: Tools, uid: int | None) -> list[str]:
    """What runs inside the sandbox before the worker's command: SIGTERM's default
    restored and, for a workspace's uid, that user and group taken on with no
    supplementary groups. Ends where the command's argv begins."""
    if tools.setpriv is not None and tools.env is not None:
        restore = [tools.env, "--default-signal=TERM"]
        if uid is None:
            return restore
        user = ["--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--"]
        return [*restore, tools.setpriv, *user]
    return [tools.python, "-I", "-S", "-c", DROP_CODE, "" if uid is None else str(uid)]


def sandbox_spec(tools: Tools, view: WorkerView, uid: int | None) -> dict[str, list[str]]:
    """The launch spec's ``sandbox``: the supervisor runs ``argv``, then a read-only bind
    of each folder of secret files it made, then ``--``, ``then`` and the command."""
    return {"argv": [tools.bwrap, *bwrap_args(view)], "then": drop_args(tools, uid)}


def devices() -> tuple[str, ...]:
    """This machine's GPU and RDMA device files, to bind into the sandbox's new /dev
    (all of them: ``CUDA_VISIBLE_DEVICES`` picks the worker's GPUs, as without a
    sandbox, since a device file's number need not be CUDA's index)."""
    return tuple(sorted({p for pattern in DEVICES for p in glob.glob(pattern)}))


def tools_for(mode: str, uid: int | None) -> Tools | None:
    """The tools to sandbox a worker with, or None when it runs without one. Raises
    `PermanentBackendError` naming the setting when ``bwrap`` is asked for and cannot
    be had; ``auto`` then runs the worker as before, with one warning per process."""
    if not wanted(mode, uid):
        return None
    tools, why = _probe()
    if tools is not None:
        return tools
    if mode == "bwrap":
        raise PermanentBackendError(
            f"{SETTING}=bwrap but bubblewrap cannot run workers on this node: {why} "
            f"(install the bubblewrap package, or set {SETTING}=auto or off)"
        )
    _warn_once(why)
    return None


@functools.cache
def _warn_once(why: str) -> None:
    log.warning("workers run without a private file-system view (%s): %s", SETTING, why)


@functools.cache
def _probe() -> tuple[Tools | None, str]:
    """Find bwrap and the user switch, and try them once (per process) the way a worker
    runs: the first that starts ``true`` is the one used."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bwrap is not installed"
    setpriv, env = shutil.which("setpriv"), shutil.which("env")
    choices = [Tools(bwrap, setpriv, env, sys.executable)] if setpriv and env else []
    choices.append(Tools(bwrap, None, None, sys.executable))
    uid = PROBE_UID if os.geteuid() == 0 else None
    why = ""
    for tools in choices:
        view = WorkerView(cwd="/", writable=())
        argv = [*sandbox_spec(tools, view, uid)["argv"], "--", *drop_args(tools, uid), "true"]
        why = _try(argv)
        if not why:
            return tools, ""
    return None, why


def _try(argv: list[str]) -> str:
    """Run a probe; empty when it worked, else what went wrong."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap did not run: {e}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[:300]
        return f"bwrap failed with status {done.returncode}: {detail}"
    return ""
