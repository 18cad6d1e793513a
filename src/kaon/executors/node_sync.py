"""A job's code and checkpoints, moved between a node and the control plane over HTTP.

A Ray node shares no disk with the control plane, so what the local executor reads from
the control plane's own folders reaches a node this way instead, authenticated with the
job's per-attempt token (``KAON_JOB_TOKEN``):

- **Code.** `fetch_code` downloads the job's snapshot (a tar.gz named by its SHA-256)
  once per node into a cache, and checks the hash of the cached copy on every use, so a
  file damaged on disk is fetched again instead of unpacked.
- **Checkpoints.** ``KAON_CHECKPOINT_DIR`` is a folder on the worker's node.
  `CheckpointMirror.push` copies what changed in it to the control plane's checkpoint
  folder for the job (every few seconds, and once more when a worker ends), and
  `CheckpointMirror.pull` brings that copy onto a node before an attempt starts there. A
  job therefore resumes on any node after a preemption or a lost node, and
  ``kaon deploy create --from-job`` finds the checkpoints where the local executor keeps
  them.

Every download lands in a temporary file beside its destination, is checked against its
SHA-256, and is renamed into place: a reader sees the old file or the new one, never half
of one. This module needs only the standard library and httpx, so it runs on a node that
has no control plane installed; the control plane imports its path rules (`path_problem`,
`resolve_under`) so that both sides accept exactly the same names.

Files still being written are not pushed (`CheckpointMirror.push` says which); kaon.train
writes each checkpoint under a scratch name and renames it into place, so a checkpoint is
pushed whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from kaon.core.errors import BackendError, PermanentBackendError, TemporaryBackendError
from kaon.core.tls import client_context

__all__ = [
    "MAX_PATH",
    "PART_PREFIX",
    "SHA256_HEADER",
    "CheckpointMirror",
    "SyncReport",
    "TrustStore",
    "fetch_code",
    "is_scratch",
    "path_problem",
    "resolve_under",
    "sha256_file",
]

PART_PREFIX = ".kaon-part-"
"""Names of our own temporary files (downloads and uploads on their way in): reserved,
never listed, never pushed."""
SCRATCH_PREFIXES = (".tmp-", ".old-", PART_PREFIX)  # kaon.train's scratch folders, and ours
SCRATCH_SUFFIXES = (".tmp", ".part")  # the usual names of a file written then renamed
MAX_PATH = 512
SETTLE_S = 1.0
SHA256_HEADER = "X-Kaon-Sha256"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MANIFEST = "manifest.json"  # kaon.train's: written last, so it is sent last
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


# -- the rules both sides share ---------------------------------------------------------------


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file in a job's checkpoint folder, or None when it can.

    A name is a relative POSIX path of at most `MAX_PATH` characters whose parts are real
    names: no empty part, no ``.`` or ``..``, no leading ``/``, no NUL or other control
    character, and no backslash (which some tools read as a separator, so ``a\\..\\b``
    could mean a climb out). Names starting with `PART_PREFIX` are reserved for our
    temporary files."""
    if not path:
        return "is empty"
    if len(path) > MAX_PATH:
        return f"is longer than {MAX_PATH} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' part"
    if any(part.startswith(PART_PREFIX) for part in parts):
        return f"uses the reserved prefix {PART_PREFIX!r}"
    return None


def is_scratch(path: str) -> bool:
    """True for files that are not checkpoints yet: anything under a folder or named like
    kaon.train's scratch (``.tmp-``, ``.old-``), our own temporary files, and names ending
    in ``.tmp`` or ``.part``."""
    parts = path.split("/")
    return any(p.startswith(SCRATCH_PREFIXES) for p in parts) or parts[-1].endswith(
        SCRATCH_SUFFIXES
    )


def resolve_under(root: Path, path: str, *, create: bool = False) -> Path:
    """``root / path``, after checking that every folder on the way is a real folder.

    A symlink below `root` could point anywhere (a worker can make one), so none is ever
    followed: a part that is a symlink or a file raises NotADirectoryError. A missing
    folder raises FileNotFoundError, or is made when `create` is set. `root` itself may be
    a symlink (an operator may put the folder on another disk). The last part is left to
    the caller: open it with ``O_NOFOLLOW``, or replace or unlink the name itself."""
    folder = root
    for part in path.split("/")[:-1]:
        folder = folder / part
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(folder)
            mode = os.lstat(folder).st_mode
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(f"{folder.relative_to(root)} is not a folder")
    return root / path


def sha256_file(path: Path) -> str:
    with _open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open_regular(path: Path) -> io.BufferedReader:
    """`path` opened for reading, refusing a symlink at its last part (OSError)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


# -- code ---------------------------------------------------------------------------------------


def fetch_code(
    http: httpx.Client, api_url: str, job_id: str, token: str, sha256: str, cache_dir: Path
) -> Path:
    """The job's snapshot as a tar.gz in `cache_dir`, downloaded once per node.

    The cached copy is hashed on every call (a snapshot is at most the upload limit, 100 MiB
    by default, so this costs a fraction of a second per launch) and fetched again when it
    does not match. Callers for the same snapshot, threads or processes, take turns on a
    lock file, so one downloads and the others find its file; a crashed download leaves
    only a temporary file, never a cached one.

    Raises TemporaryBackendError when the control plane cannot be reached or answers 5xx,
    PermanentBackendError when it refuses (401: not the current attempt's token; 404: the
    job has no snapshot) or sends bytes whose SHA-256 is not `sha256`."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{sha256}.tar.gz"
    if _is_intact(final, sha256):
        return final
    with _locked(cache_dir / f"{sha256}.lock"):
        if not _is_intact(final, sha256):  # another caller may have fetched it meanwhile
            url = f"{_base(api_url)}/api/v1/jobs/{quote(job_id, safe='')}/code"
            _download(http, url, token, final, sha256, DEFAULT_TIMEOUT)
    return final


def _is_intact(path: Path, sha256: str) -> bool:
    try:
        return sha256_file(path) == sha256
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing) across threads and processes."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- HTTP ---------------------------------------------------------------------------------------


def _base(api_url: str) -> str:
    return api_url.rstrip("/")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Network trouble (refused, reset, timed out) becomes TemporaryBackendError."""
    try:
        yield
    except httpx.TransportError as e:
        raise TemporaryBackendError(f"{what}: {type(e).__name__}: {e}") from e


def _check(response: httpx.Response, what: str) -> None:
    """A refusal becomes a BackendError: temporary for 5xx, 408 and 429, else permanent."""
    if response.is_success:
        return
    response.read()
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    message = f"{what}: HTTP {response.status_code}: {detail}"
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise TemporaryBackendError(message)
    if response.status_code == 404:
        raise _NotThere(message)
    raise PermanentBackendError(message)


class _NotThere(PermanentBackendError):
    """404: permanent for code, but a checkpoint file deleted since its listing is only
    one less file to pull."""


def _download(
    http: httpx.Client,
    url: str,
    token: str,
    dest: Path,
    sha256: str,
    timeout: httpx.Timeout,
    mismatch: type[BackendError] = PermanentBackendError,
) -> None:
    """GET `url` into a temporary file beside `dest`, check its SHA-256, rename it over
    `dest`. Nothing is left behind when any step fails; bytes other than `sha256` raise
    `mismatch`."""
    fd, tmp = tempfile.mkstemp(prefix=PART_PREFIX, dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, _translated(f"GET {url}"):
            with http.stream("GET", url, headers=_auth(token), timeout=timeout) as response:
                _check(response, f"GET {url}")
                for chunk in response.iter_bytes(_CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
            os.fchmod(f.fileno(), 0o644)  # as if written by the job (mkstemp makes 0600)
        if digest.hexdigest() != sha256:
            raise mismatch(
                f"GET {url}: the bytes received have sha256 {digest.hexdigest()[:12]}, "
                f"not {sha256[:12]}"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- checkpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReport:
    """What one `CheckpointMirror.push` or `pull` did, as relative paths."""

    transferred: tuple[str, ...] = ()  # uploaded (push) or downloaded (pull)
    deleted: tuple[str, ...] = ()  # deleted on the control plane (push only)
    skipped: tuple[str, ...] = ()  # still being written (push), or a name refused (pull)


@dataclass(frozen=True)
class _Known:
    """A file as the control plane has it, and the local stat it was read from."""

    size: int
    mtime_ns: int
    sha256: str


_Key = tuple[str, str, str]  # (api_url, job_id, folder)


class TrustStore:
    """What a node's sync client trusts: the system's store, plus the certificate of each
    control plane whose gangs it ran (``KAON_CA_PEM`` in the gang's environment). A Ray
    node cannot read the control plane's home, and a self-signed certificate is in no
    system store, so the certificate travels with the work. Certificates are added to
    the one context the client was built with, so connections made after `add` verify
    by it; one added before a rotation stays trusted until the process ends."""

    def __init__(self) -> None:
        self.context = client_context()
        self._added: set[str] = set()
        self._lock = threading.Lock()

    def add(self, ca_pem: str | None) -> None:
        if not ca_pem:
            return
        with self._lock:
            if ca_pem not in self._added:
                self.context.load_verify_locations(cadata=ca_pem)
                self._added.add(ca_pem)


class CheckpointMirror:
    """Keeps a node's checkpoint folders and the control plane's copies the same.

    ```python
    mirror = CheckpointMirror(http)
    mirror.pull(job_id, token, api_url, folder)  # before the attempt starts on this node
    mirror.push(job_id, token, api_url, folder)  # every few seconds while it runs
    mirror.push(job_id, token, api_url, folder, final=True)  # once its workers ended
    ```

    The mirror remembers, per folder, each file it has pushed or pulled (size, mtime and
    SHA-256), so a push hashes and sends only files whose size or mtime changed, and
    deletes on the control plane only files it saw here that are gone now: a push from a
    folder that was never pulled (or is empty) never deletes the job's checkpoints. Calls
    for one folder take turns (the periodic push and a worker's last push may meet); a
    call that fails part-way keeps what it finished, and the next call does the rest.

    Pushing skips files that are still being written, by this rule:

    - anything `is_scratch` names (kaon.train's ``.tmp-``/``.old-`` folders, ``*.tmp``,
      ``*.part``, our own temporary files), always;
    - a file modified less than `settle_s` (one second) ago, unless ``final=True``: the
      worker may still be writing it. Once the workers have ended nothing writes any more,
      so the last push (``final=True``) sends those too, the checkpoint written as a worker
      is preempted included;
    - a file that changed while it was being hashed.

    Symlinks are never followed or sent. Local file-system errors propagate as OSError.
    """

    def __init__(
        self,
        http: httpx.Client | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._owns_http = http is None
        self._timeout = timeout
        self._settle_s = settle_s
        self._clock = clock
        self._known: dict[_Key, dict[str, _Known]] = {}
        self._locks: dict[_Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> CheckpointMirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forget(self, job_id: str) -> None:
        """Drop what is remembered of a job's folders (its last worker here is done)."""
        with self._guard:
            for key in [k for k in self._known if k[1] == job_id]:
                del self._known[key]

    def pull(self, job_id: str, token: str, api_url: str, folder: Path) -> SyncReport:
        """Download each of the job's checkpoint files that is missing here or differs (by
        size and SHA-256). Files only here are kept (they are pushed like any other: a
        node never destroys what may be the newest checkpoint); remote names that
        `path_problem` refuses or `is_scratch` names are skipped."""
        key = _key(api_url, job_id, folder)
        with self._lock_for(key):
            folder.mkdir(parents=True, exist_ok=True)
            remote = self._remote(job_id, token, api_url)
            known = self._known.setdefault(key, {})
            got, skipped = [], []
            for path in _manifests_last(remote):
                if path_problem(path) or is_scratch(path):
                    skipped.append(path)
                    continue
                try:
                    if self._pull_one(job_id, token, api_url, folder, path, remote[path], known):
                        got.append(path)
                except (NotADirectoryError, _NotThere):
                    # A symlink or a file where a folder should be here, or a file deleted
                    # on the control plane since the listing.
                    skipped.append(path)
            return SyncReport(transferred=tuple(got), skipped=tuple(skipped))

    def push(
        self, job_id: str, token: str, api_url: str, folder: Path, *, final: bool = False
    ) -> SyncReport:
        """Upload new and changed files, delete on the control plane the files deleted
        here, and skip those still being written (see the class docstring; ``final=True``
        once nothing writes any more). Raises BackendError when a call failed; what was
        done before it is kept."""
        key = _key(api_url, job_id, folder)
        with self._lock_for(key):
            known = self._known.get(key)
            hints: dict[str, _Known] = {}
            if known is None:
                # The first push of this folder here (a restarted agent, say): files the
                # control plane already has need not be sent again. They are hints only;
                # nothing is known to have been seen here, so nothing can be deleted.
                hints = self._remote(job_id, token, api_url) if folder.is_dir() else {}
                known = self._known[key] = {}
            return self._push(job_id, token, api_url, folder, known, hints, final)

    # -- push, one folder at a time --

    def _push(
        self,
        job_id: str,
        token: str,
        api_url: str,
        folder: Path,
        known: dict[str, _Known],
        hints: Mapping[str, _Known],
        final: bool,
    ) -> SyncReport:
        present = _scan(folder)
        now = self._clock()
        ready = {
            p: st
            for p, st in present.items()
            if final or not 0 <= now - st.st_mtime < self._settle_s
        }
        sent, deleted = [], []
        skipped = [p for p in present if p not in ready]
        failure: BackendError | None = None
        for path in _manifests_last(ready):
            try:
                outcome = self._push_one(job_id, token, api_url, folder, path, known, hints)
            except PermanentBackendError as e:  # this file only (too large, say): go on
                failure = failure or e
                continue
            except FileNotFoundError:  # deleted since the scan: the next push deletes it
                continue
            if outcome == "sent":
                sent.append(path)
            elif outcome == "changing":
                skipped.append(path)
        for path in sorted(p for p in known if p not in present):
            try:
                self._delete(job_id, token, api_url, path)
            except PermanentBackendError as e:
                failure = failure or e
                continue
            del known[path]
            deleted.append(path)
        if failure is not None:
            raise failure
        return SyncReport(tuple(sent), tuple(deleted), tuple(sorted(skipped)))

    def _push_one(
        self,
        job_id: str,
        token: str,
        api_url: str,
        folder: Path,
        path: str,
        known: dict[str, _Known],
        hints: Mapping[str, _Known],
    ) -> str:
        """'same', 'sent', or 'changing' (modified while it was hashed: next time)."""
        file = folder / path
        before = os.lstat(file)
        seen = known.get(path)
        if seen and (seen.size, seen.mtime_ns) == (before.st_size, before.st_mtime_ns):
            return "same"
        sha = sha256_file(file)
        after = os.lstat(file)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            return "changing"
        now = _Known(after.st_size, after.st_mtime_ns, sha)
        hint = seen or hints.get(path)
        if hint is None or (hint.size, hint.sha256) != (now.size, now.sha256):
            self._upload(job_id, token, api_url, path, file, sha)
            known[path] = now
            return "sent"
        known[path] = now
        return "same"

    # -- pull, one file at a time --

    def _pull_one(
        self,
        job_id: str,
        token: str,
        api_url: str,
        folder: Path,
        path: str,
        remote: _Known,
        known: dict[str, _Known],
    ) -> bool:
        """True when the file was downloaded, False when the local copy already matched."""
        target = resolve_under(folder, path, create=True)
        try:
            st = os.lstat(target)
            same = st.st_size == remote.size and sha256_file(target) == remote.sha256
        except FileNotFoundError:
            same = False
        if not same:
            url = self._file_url(api_url, job_id, path)
            # Bytes other than listed: replaced meanwhile by a push from elsewhere; retry.
            changed = TemporaryBackendError
            _download(self._http, url, token, target, remote.sha256, self._timeout, changed)
            st = os.lstat(target)
        known[path] = _Known(st.st_size, st.st_mtime_ns, remote.sha256)
        return not same

    # -- HTTP --

    def _remote(self, job_id: str, token: str, api_url: str) -> dict[str, _Known]:
        url = f"{_base(api_url)}/api/v1/jobs/{quote(job_id, safe='')}/checkpoints"
        with _translated(f"GET {url}"):
            response = self._http.get(url, headers=_auth(token), timeout=self._timeout)
        _check(response, f"GET {url}")
        return {e["path"]: _Known(e["size"], 0, e["sha256"]) for e in _entries(response.json())}

    def _upload(
        self, job_id: str, token: str, api_url: str, path: str, file: Path, sha256: str
    ) -> None:
        url = self._file_url(api_url, job_id, path)
        headers = {
            **_auth(token),
            SHA256_HEADER: sha256,
            "Content-Type": "application/octet-stream",
        }
        with _open_regular(file) as body, _translated(f"PUT {url}"):
            # A file object: httpx streams it and sends its size as Content-Length.
            response = self._http.put(url, content=body, headers=headers, timeout=self._timeout)
        _check(response, f"PUT {url}")

    def _delete(self, job_id: str, token: str, api_url: str, path: str) -> None:
        url = self._file_url(api_url, job_id, path)
        with _translated(f"DELETE {url}"):
            response = self._http.delete(url, headers=_auth(token), timeout=self._timeout)
        _check(response, f"DELETE {url}")

    def _file_url(self, api_url: str, job_id: str, path: str) -> str:
        job = quote(job_id, safe="")
        return f"{_base(api_url)}/api/v1/jobs/{job}/checkpoints/{quote(path, safe='/')}"

    def _lock_for(self, key: _Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def _key(api_url: str, job_id: str, folder: Path) -> _Key:
    return (_base(api_url), job_id, os.path.abspath(folder))


def _entries(body: Any) -> list[dict[str, Any]]:
    """The listing's entries, checked enough that a malformed one cannot pass as a file."""
    if not isinstance(body, list):
        raise PermanentBackendError(f"checkpoint listing is not a list: {json.dumps(body)[:200]}")
    for e in body:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("size"), int)
            and isinstance(e.get("sha256"), str)
        ):
            raise PermanentBackendError(f"malformed checkpoint listing entry: {e!r:.200}")
    return body


def _scan(folder: Path) -> dict[str, os.stat_result]:
    """Regular files under `folder` by relative POSIX path, less scratch and bad names.
    Symlinked folders are not entered and symlinked files not listed."""
    found: dict[str, os.stat_result] = {}
    if not folder.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(folder).as_posix()
            if is_scratch(rel) or path_problem(rel):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    found[rel] = st
    return found


def _manifests_last(paths: Mapping[str, object]) -> list[str]:
    """Sorted, with each folder's ``manifest.json`` after its other files: kaon.train
    writes the manifest last because it is what makes a checkpoint valid, and a transfer
    cut off part-way should leave a checkpoint without one (skipped on load), not a
    manifest that promises files which never came."""
    return sorted(paths, key=lambda p: (p.rsplit("/", 1)[-1] == MANIFEST, p))
