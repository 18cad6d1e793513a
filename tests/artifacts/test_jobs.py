"""Artifacts and jobs on the real app with real worker processes (SQLite and PostgreSQL):
a job's inputs appear read-only in its working folder, its outputs are kept when it
succeeds, and bad inputs are refused at submit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from kaon.core.errors import InvalidSpecError, PermanentBackendError, TemporaryBackendError
from kaon.core.jobs import JobStatus
from kaon.core.pools import LOCAL_POOL
from kaon.sdk.client import Client
from kaon.server.db.models import Job, Node, Workspace
from kaon.server.db.session import Database
from kaon.server.security.keys import KeyRing, load_master_keys
from kaon.server.services.artifacts import attach_store, inputs_for
from kaon.server.services.secrets import attach_keys
from kaon.server.storage.blobstore import LocalBlobStore
from tests.conftest import RunningServer

PY = sys.executable

READ_INPUTS = """
import json, os, pathlib, stat
data = pathlib.Path("data")
text = (data / "train.csv").read_text()
modes = [stat.S_IMODE(p.stat().st_mode) for p in (data, data / "train.csv")]
try:
    (data / "train.csv").write_text("changed")
    wrote = True
except OSError:
    wrote = False
try:
    (data / "new.txt").write_text("x")
    added = True
except OSError:
    added = False
out = pathlib.Path(os.environ["KAON_OUTPUT_DIR"])
(out / "model").mkdir()
(out / "model" / "weights.txt").write_text("w=" + text.strip())
print(json.dumps({"text": text, "modes": modes, "wrote": wrote, "added": added}))
"""


def _push_data(client: Client, tmp_path: Path, text: str) -> str:
    src = tmp_path / f"data-{len(text)}"
    src.mkdir()
    (src / "train.csv").write_text(text)
    return client.artifacts.push("digits", src, kind="dataset").ref


class TestJobArtifacts:
    def test_inputs_are_read_only_and_outputs_are_kept(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        _push_data(client, tmp_path, "1,2,3\n")
        _push_data(client, tmp_path, "4,5,6,7\n")  # digits:2, the latest
        spec = {
            "name": "train-digits",
            "command": [PY, "-c", READ_INPUTS],
            "inputs": [{"artifact": "digits:1", "path": "data/"}],
            "resources": {"cpu": 0.5},
        }
        job = client.jobs.submit(spec=spec)
        done = client.jobs.wait(job.id, timeout=60)
        log = client.jobs.logs(job.id)
        assert done.status is JobStatus.SUCCEEDED, (done.message, log)
        seen = json.loads(log.strip().splitlines()[-1])
        assert seen["text"] == "1,2,3\n"
        assert [m & 0o222 for m in seen["modes"]] == [0, 0]  # no one may write
        if os.geteuid() != 0:  # root writes whatever the modes say
            assert (seen["wrote"], seen["added"]) == (False, False)
        [kept] = client.artifacts.list("train-digits")
        assert (kept.ref, kept.kind, kept.source_job_id) == ("train-digits:1", "output", job.id)
        assert [f.path for f in client.artifacts.get(kept.ref).files or []] == [
            "model/weights.txt"
        ]
        client.artifacts.download(kept.ref, tmp_path / "out")
        assert (tmp_path / "out" / "model" / "weights.txt").read_text() == "w=1,2,3"
        cache = server.settings.home / "cache" / "artifacts"
        assert [p.name for p in cache.iterdir()] == [client.artifacts.get("digits:1").digest]

    def test_a_bare_name_is_pinned_at_submit(self, client: Client, tmp_path: Path) -> None:
        _push_data(client, tmp_path, "1,2,3\n")
        spec = {
            "command": [PY, "-c", "print(open('d/train.csv').read())"],
            "inputs": [{"artifact": "digits", "path": "d"}],
            "resources": {"cpu": 0.5},
        }
        job = client.jobs.submit(spec=spec)
        _push_data(client, tmp_path, "4,5,6,7\n")  # pushed after the submit: not used
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
        assert client.jobs.logs(job.id).strip() == "1,2,3"

    def test_a_job_with_empty_outputs_keeps_nothing(self, client: Client) -> None:
        job = client.jobs.submit(command=[PY, "-c", "print('hi')"], cpu=0.5)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
        assert client.artifacts.list() == []

    @pytest.mark.parametrize(
        ("inputs", "field", "words"),
        [
            ([{"artifact": "nope:1", "path": "d"}], "inputs.0.artifact", "not an artifact"),
            ([{"artifact": "digits:1", "path": "../up"}], "inputs.0.path", "relative"),
            ([{"artifact": "digits:1", "path": "/abs"}], "inputs.0.path", "relative"),
            ([{"artifact": "Bad:ref", "path": "d"}], "inputs.0.artifact", "NAME:VERSION"),
            (
                [{"artifact": "digits:1", "path": "d"}, {"artifact": "digits:1", "path": "d/x"}],
                "inputs",
                "overlap",
            ),
        ],
    )
    def test_bad_inputs_are_refused_at_submit(
        self, client: Client, tmp_path: Path, inputs: list[dict[str, str]], field: str, words: str
    ) -> None:
        _push_data(client, tmp_path, "1,2,3\n")
        spec = {"command": [PY, "-c", "pass"], "inputs": inputs}
        with pytest.raises(InvalidSpecError, match=words) as info:
            client.jobs.submit(spec=spec)
        assert info.value.field == field
        assert client.jobs.list() == []


class TestRayPools:
    def test_a_job_with_inputs_placed_on_a_ray_node_is_refused_at_launch(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        """Ray nodes do not fetch artifacts yet: the launch step refuses such a job with
        the reason instead of running it without its data (the launch step's own call,
        with a Ray node as the placement)."""
        _push_data(client, tmp_path, "1,2,3\n")
        spec = {"command": ["true"], "inputs": [{"artifact": "digits:1", "path": "d"}]}

        async def launch_inputs() -> None:
            db = Database(server.settings.database_url)
            try:
                async with db.session() as s:
                    ray_node = Node(
                        id="ray-1",
                        name="gpu-1",
                        executor="ray",
                        address="10.0.0.2",
                        cpu=8.0,
                        memory=2**34,
                    )
                    s.add(ray_node)
                    workspace_id = await s.scalar(
                        select(Workspace.id).where(Workspace.name == "default")
                    )
                job = Job(id="j-raytest", workspace_id=workspace_id, spec=spec)
                await inputs_for(db, job, ["ray-1"])
            finally:
                await db.dispose()

        with pytest.raises(PermanentBackendError, match="Ray pools do not fetch artifacts"):
            asyncio.run(launch_inputs())


class TestPreparingInputs:
    def test_a_copy_is_made_off_the_pass_and_the_job_waits_for_it(
        self, client: Client, server: RunningServer, tmp_path: Path
    ) -> None:
        """The launch step does not copy in its own pass: the first call starts the copy
        and answers "retry later"; once the copy is whole and verified the launch gets
        it, and a second job of the same version gets it at once."""
        _push_data(client, tmp_path, "1,2,3\n")
        spec = {"command": ["true"], "inputs": [{"artifact": "digits:1", "path": "d"}]}
        digest = client.artifacts.get("digits:1").digest

        async def launches() -> tuple[str, list[tuple[str, str]], tuple[tuple[str, str], ...]]:
            db = Database(server.settings.database_url)
            attach_keys(db, KeyRing(load_master_keys(server.settings.home)))
            attach_store(
                db,
                LocalBlobStore(server.settings.artifacts_dir),
                server.settings.artifact_cache_dir,
            )
            try:
                async with db.session() as s:
                    workspace_id = await s.scalar(
                        select(Workspace.id).where(Workspace.name == "default")
                    )
                    node = await s.scalar(select(Node.id).where(Node.executor == LOCAL_POOL))
                assert workspace_id is not None and node is not None
                job = Job(id="j-prep1", workspace_id=workspace_id, spec=spec)
                with pytest.raises(TemporaryBackendError) as first:
                    await inputs_for(db, job, [node])
                got: tuple[tuple[str, str], ...] = ()
                while not got:  # the copy finishes in a task of its own
                    await asyncio.sleep(0.05)
                    with contextlib.suppress(TemporaryBackendError):
                        got = await inputs_for(db, job, [node])
                other = Job(id="j-prep2", workspace_id=workspace_id, spec=spec)
                return str(first.value), list(got), await inputs_for(db, other, [node])
            finally:
                await db.dispose()

        message, got, again = asyncio.run(launches())
        assert "preparing inputs: copying digits:1" in message
        copy = server.settings.artifact_cache_dir / digest
        assert got == [("d", str(copy))] and list(again) == got
        assert (copy / "train.csv").read_text() == "1,2,3\n"
