"""A node's side of code and checkpoints (`kaon.executors.node_sync`) against the real
control plane on loopback. The database does not matter here, so SQLite only."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaon.core.errors import PermanentBackendError, TemporaryBackendError
from kaon.core.jobs import JobStatus, JobView
from kaon.executors.node_sync import CheckpointMirror, TrustStore, fetch_code
from kaon.server.security.tokens import job_token, load_token_key
from tests.conftest import RunningServer, free_port
from tests.security.test_tls import TlsServer
from tests.security.test_tls import tls_server as tls_server  # a fixture: https, self-signed

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


class Requests:
    """An httpx event hook that records each request as "METHOD path"."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.seen.append(f"{request.method} {request.url.path}")

    def of(self, method: str) -> list[str]:
        return [r for r in self.seen if r.startswith(f"{method} ")]


@pytest.fixture
def requests() -> Requests:
    return Requests()


@pytest.fixture
def http(requests: Requests) -> Iterator[httpx.Client]:
    with httpx.Client(event_hooks={"request": [requests]}, timeout=10) as client:
        yield client


def _run(server: RunningServer, workdir: Path | None = None) -> JobView:
    """A job running its first attempt."""
    with server.client() as client:
        job = client.jobs.submit(SLEEP, cpu=0.5, workdir=workdir)
        deadline = time.monotonic() + 30
        while (view := client.jobs.get(job.id)).status is not JobStatus.RUNNING:
            assert time.monotonic() < deadline, f"the job never ran: {view}"
            time.sleep(0.05)
    return view


def _token(server: RunningServer, job_id: str, attempt: int = 1) -> str:
    return job_token(load_token_key(server.settings.home), job_id, attempt)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _age(folder: Path, seconds: float = 10) -> None:
    """Make every file look written `seconds` ago: settled, as if the writer moved on."""
    past = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (past, past))


class TestFetchCode:
    @pytest.fixture
    def job(self, sqlite_server: RunningServer, tmp_path: Path) -> JobView:
        code = tmp_path / "code"
        code.mkdir()
        (code / "train.py").write_text("print('hello from the snapshot')\n")
        return _run(sqlite_server, code)

    def test_fetches_once_then_serves_the_cache(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        http: httpx.Client,
        requests: Requests,
        tmp_path: Path,
    ) -> None:
        sha = job.spec.snapshot
        assert sha is not None
        token, cache = _token(sqlite_server, job.id), tmp_path / "cache"
        first = fetch_code(http, sqlite_server.url, job.id, token, sha, cache)
        assert hashlib.sha256(first.read_bytes()).hexdigest() == sha
        assert requests.seen == [f"GET /api/v1/jobs/{job.id}/code"]
        second = fetch_code(http, sqlite_server.url, job.id, token, sha, cache)
        assert second == first
        assert len(requests.seen) == 1  # no request: the cached copy was intact
        assert [p.name for p in cache.iterdir() if p.name.startswith(".kaon-part-")] == []

    def test_a_corrupted_cache_file_is_fetched_again(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        http: httpx.Client,
        requests: Requests,
        tmp_path: Path,
    ) -> None:
        sha = job.spec.snapshot
        assert sha is not None
        token, cache = _token(sqlite_server, job.id), tmp_path / "cache"
        path = fetch_code(http, sqlite_server.url, job.id, token, sha, cache)
        good = path.read_bytes()
        path.write_bytes(good[:-10] + b"flipped!!!")  # same size, different bytes
        assert fetch_code(http, sqlite_server.url, job.id, token, sha, cache) == path
        assert path.read_bytes() == good
        assert len(requests.seen) == 2

    def test_concurrent_callers_share_one_download(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        http: httpx.Client,
        requests: Requests,
        tmp_path: Path,
    ) -> None:
        sha = job.spec.snapshot
        assert sha is not None
        token, cache = _token(sqlite_server, job.id), tmp_path / "cache"
        got: list[Path] = []

        def fetch() -> None:
            got.append(fetch_code(http, sqlite_server.url, job.id, token, sha, cache))

        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 6 and len(set(got)) == 1
        assert hashlib.sha256(got[0].read_bytes()).hexdigest() == sha
        assert len(requests.seen) == 1

    def test_errors_say_whether_to_retry(
        self, sqlite_server: RunningServer, job: JobView, http: httpx.Client, tmp_path: Path
    ) -> None:
        sha = job.spec.snapshot
        assert sha is not None
        token, cache, url = _token(sqlite_server, job.id), tmp_path / "cache", sqlite_server.url
        with pytest.raises(PermanentBackendError, match="sha256"):  # not the bytes asked for
            fetch_code(http, url, job.id, token, "ab" * 32, cache)
        with pytest.raises(PermanentBackendError, match="401"):  # not this attempt's token
            fetch_code(http, url, job.id, _token(sqlite_server, job.id, 2), sha, cache)
        with pytest.raises(TemporaryBackendError):  # nobody listens there
            fetch_code(http, f"http://127.0.0.1:{free_port()}", job.id, token, sha, cache)
        assert list(cache.glob("*.tar.gz")) == []
        assert [p.name for p in cache.iterdir() if p.name.startswith(".kaon-part-")] == []

    def test_a_job_without_a_snapshot_is_a_permanent_error(
        self, sqlite_server: RunningServer, http: httpx.Client, tmp_path: Path
    ) -> None:
        job = _run(sqlite_server)
        with pytest.raises(PermanentBackendError, match="404"):
            fetch_code(
                http, sqlite_server.url, job.id, _token(sqlite_server, job.id), "ab" * 32, tmp_path
            )


class TestCheckpointMirror:
    @pytest.fixture
    def job(self, sqlite_server: RunningServer) -> JobView:
        return _run(sqlite_server)

    @pytest.fixture
    def folder(self, tmp_path: Path) -> Path:
        """A node's checkpoint folder as kaon.train leaves it, settled."""
        folder = tmp_path / "node-a"
        step = folder / "step-000000050"
        step.mkdir(parents=True)
        (step / "model.pt").write_bytes(os.urandom(3 * 2**20 + 7))  # over one read chunk
        (step / "train_state.pt").write_bytes(b"optimizer state")
        (step / "manifest.json").write_text('{"step": 50}\n')
        (folder / "notes.txt").write_text("top-level files travel too\n")
        _age(folder)
        return folder

    def test_push_then_pull_into_an_empty_folder_reproduces_the_files(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        folder: Path,
        http: httpx.Client,
        tmp_path: Path,
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        mirror = CheckpointMirror(http)
        pushed = mirror.push(job.id, token, url, folder)
        assert set(pushed.transferred) == set(_files(folder))
        assert pushed.transferred[-1].endswith("manifest.json")  # sent after its files
        plane_copy = sqlite_server.settings.checkpoints_dir / job.id
        assert _files(plane_copy) == _files(folder)

        other_node = tmp_path / "node-b"
        pulled = CheckpointMirror(http).pull(job.id, token, url, other_node)
        assert set(pulled.transferred) == set(_files(folder))
        assert _files(other_node) == _files(folder)

    def test_push_sends_only_what_changed(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        folder: Path,
        http: httpx.Client,
        requests: Requests,
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        mirror = CheckpointMirror(http)
        mirror.push(job.id, token, url, folder)
        requests.seen.clear()
        assert mirror.push(job.id, token, url, folder).transferred == ()
        assert requests.seen == []  # nothing changed: not even a listing
        (folder / "notes.txt").write_text("edited\n")
        os.utime(folder / "step-000000050" / "model.pt")  # touched, same bytes
        _age(folder)
        assert mirror.push(job.id, token, url, folder).transferred == ("notes.txt",)
        assert len(requests.of("PUT")) == 1

    def test_a_new_mirror_does_not_send_what_the_plane_has(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        folder: Path,
        http: httpx.Client,
        requests: Requests,
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        CheckpointMirror(http).push(job.id, token, url, folder)
        requests.seen.clear()
        restarted = CheckpointMirror(http)  # an agent that restarted: it remembers nothing
        assert restarted.push(job.id, token, url, folder).transferred == ()
        assert requests.of("PUT") == []

    def test_a_file_deleted_here_is_deleted_on_the_plane(
        self, sqlite_server: RunningServer, job: JobView, folder: Path, http: httpx.Client
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        mirror = CheckpointMirror(http)
        mirror.push(job.id, token, url, folder)
        for f in (folder / "step-000000050").iterdir():  # kaon.train pruned the step
            f.unlink()
        (folder / "step-000000050").rmdir()
        report = mirror.push(job.id, token, url, folder)
        assert set(report.deleted) == {
            "step-000000050/manifest.json",
            "step-000000050/model.pt",
            "step-000000050/train_state.pt",
        }
        plane_copy = sqlite_server.settings.checkpoints_dir / job.id
        assert _files(plane_copy) == {"notes.txt": b"top-level files travel too\n"}
        assert not (plane_copy / "step-000000050").exists()

    def test_files_being_written_are_not_pushed_until_settled_or_final(
        self, sqlite_server: RunningServer, job: JobView, folder: Path, http: httpx.Client
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        scratch = folder / ".tmp-step-000000060-1234"  # kaon.train's checkpoint on its way
        scratch.mkdir()
        (scratch / "model.pt").write_bytes(b"half a mod")
        (folder / "export.bin.tmp").write_bytes(b"partial")
        _age(folder)
        (folder / "live.log").write_text("written just now\n")
        now = time.time()
        os.utime(folder / "live.log", (now, now))
        mirror = CheckpointMirror(http, clock=lambda: now + 0.5)  # half a second later
        report = mirror.push(job.id, token, url, folder)
        assert "live.log" in report.skipped
        plane_copy = sqlite_server.settings.checkpoints_dir / job.id
        assert set(_files(plane_copy)) == {
            "notes.txt",
            "step-000000050/manifest.json",
            "step-000000050/model.pt",
            "step-000000050/train_state.pt",
        }
        # The workers ended: nothing writes any more, so the last push takes the fresh file,
        # and still never a scratch one (a killed writer leaves those half done).
        final = mirror.push(job.id, token, url, folder, final=True)
        assert final.transferred == ("live.log",)
        assert "live.log" in _files(plane_copy)
        assert not any("tmp" in p for p in _files(plane_copy))

    def test_a_push_from_a_folder_never_pulled_deletes_nothing(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        folder: Path,
        http: httpx.Client,
        tmp_path: Path,
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        CheckpointMirror(http).push(job.id, token, url, folder)
        empty = tmp_path / "fresh-node"
        empty.mkdir()
        assert CheckpointMirror(http).push(job.id, token, url, empty).deleted == ()
        plane_copy = sqlite_server.settings.checkpoints_dir / job.id
        assert len(_files(plane_copy)) == 4

    def test_pull_replaces_different_files_and_keeps_local_ones(
        self,
        sqlite_server: RunningServer,
        job: JobView,
        folder: Path,
        http: httpx.Client,
        tmp_path: Path,
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        CheckpointMirror(http).push(job.id, token, url, folder)
        node = tmp_path / "node-b"
        (node / "step-000000050").mkdir(parents=True)
        (node / "step-000000050" / "model.pt").write_bytes(b"stale")
        (node / "step-000000050" / "manifest.json").write_text('{"step": 50}\n')  # same
        (node / "only-here.txt").write_text("kept\n")
        report = CheckpointMirror(http).pull(job.id, token, url, node)
        assert set(report.transferred) == {
            "notes.txt",
            "step-000000050/model.pt",
            "step-000000050/train_state.pt",
        }
        assert _files(node) == {**_files(folder), "only-here.txt": b"kept\n"}

    def test_a_failed_push_is_retried_by_the_next(
        self, sqlite_server: RunningServer, job: JobView, folder: Path
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        failing = {"left": 1}

        def refuse_one_upload(request: httpx.Request) -> None:
            if request.method == "PUT" and failing["left"]:
                failing["left"] -= 1
                raise httpx.ConnectError("connection refused", request=request)

        with httpx.Client(event_hooks={"request": [refuse_one_upload]}, timeout=10) as http:
            mirror = CheckpointMirror(http)
            with pytest.raises(TemporaryBackendError):
                mirror.push(job.id, token, url, folder)
            report = mirror.push(job.id, token, url, folder)
        plane_copy = sqlite_server.settings.checkpoints_dir / job.id
        assert _files(plane_copy) == _files(folder)
        assert report.transferred  # what failed the first time went the second

    def test_the_token_of_an_ended_attempt_still_pushes(
        self, sqlite_server: RunningServer, job: JobView, folder: Path, http: httpx.Client
    ) -> None:
        token, url = _token(sqlite_server, job.id), sqlite_server.url
        with sqlite_server.client() as client:
            client.jobs.cancel(job.id)
            client.jobs.wait(job.id, timeout=30)
        report = CheckpointMirror(http).push(job.id, token, url, folder, final=True)
        assert len(report.transferred) == 4
        with pytest.raises(PermanentBackendError, match="401"):
            CheckpointMirror(http).push(job.id, "kjob_" + "0" * 64, url, folder)


class TestTrustStore:
    """A Ray node's agent builds its client once and learns the control plane's
    certificate from the gangs it is given: connections after `add` verify by it."""

    def test_a_self_signed_control_plane_is_trusted_once_its_certificate_is_added(
        self, tls_server: TlsServer
    ) -> None:
        trust = TrustStore()
        with httpx.Client(verify=trust.context, timeout=10) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                http.get(f"{tls_server.url}/healthz")
            trust.add(None)  # a plain-HTTP control plane's gangs bring none
            trust.add(Path(tls_server.cert).read_text())
            trust.add(Path(tls_server.cert).read_text())  # again: once is enough
            assert http.get(f"{tls_server.url}/healthz").status_code == 200
