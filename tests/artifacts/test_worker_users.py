"""Inputs and outputs of a job whose workers run as a user of their own (a control plane
run as root, ``KAON_WORKER_UIDS``): the input is a read-only copy the worker cannot
change, and its outputs are still kept. Needs root; elsewhere it skips."""

from __future__ import annotations

from pathlib import Path

from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer
from tests.security.test_worker_users import pytestmark, server  # noqa: F401

SCRIPT = """
id -u
stat -c '%a' data data/train.csv
cat data/train.csv
echo changed > data/train.csv && echo WROTE
touch data/new.txt && echo ADDED
echo kept > "$KAON_OUTPUT_DIR/result.txt"
exit 0
"""


def test_inputs_read_only_and_outputs_kept_as_another_user(
    server: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "train.csv").write_text("1,2,3\n")
    with server.client() as client:
        client.artifacts.push("digits", src)
        spec = {
            "name": "as-user",
            "command": ["/bin/sh", "-c", SCRIPT],
            "inputs": [{"artifact": "digits:1", "path": "data"}],
            "resources": {"cpu": 0.5},
        }
        job = client.jobs.submit(spec=spec)
        done = client.jobs.wait(job.id, timeout=60)
        log = client.jobs.logs(job.id)
        assert done.status is JobStatus.SUCCEEDED, log
        lines = log.split()
        assert int(lines[0]) != 0
        assert lines[1:4] == ["555", "444", "1,2,3"], log
        assert "WROTE" not in log and "ADDED" not in log, log
        [kept] = client.artifacts.list("as-user")
        assert kept.source_job_id == job.id
