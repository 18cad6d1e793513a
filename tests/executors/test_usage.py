"""A worker's usage as its supervisor samples it (`kaon.executors._usage`), on real
processes: the whole tree's CPU and memory, GPUs only where NVML sees them, and a
reporter that never holds the worker up when the control plane is away."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kaon.executors._usage import CPU, RSS, TreeSampler, UsageReporter, gpu_usage, interval_of

# A parent that burns a core and a child that holds ~200 MB: the tree is what counts.
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
    "time.sleep(60)"])
end = time.monotonic() + 60
while time.monotonic() < end:
    pass
"""


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    yield proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


class TestTreeSampler:
    def test_cpu_and_memory_of_the_whole_tree(self, tree: subprocess.Popen[bytes]) -> None:
        sampler = TreeSampler(tree.pid)
        deadline = time.monotonic() + 30
        cores, rss = 0.0, 0
        # The tree spins: on a busy machine it gets what the others leave, so any clear
        # share of a core proves its CPU is counted.
        while time.monotonic() < deadline and not (cores > 0.2 and rss > 150 * 2**20):
            time.sleep(1.0)
            cores, rss = sampler.sample()
        assert cores > 0.2, cores
        assert rss > 150 * 2**20, rss

    def test_a_process_that_is_gone_uses_nothing(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        sampler = TreeSampler(proc.pid)
        proc.wait()
        assert sampler.sample() == (0.0, 0)


class TestGpuUsage:
    def test_no_gpus_allocated_is_none(self) -> None:
        assert gpu_usage([]) is None

    @pytest.mark.skipif(_nvml_present(), reason="a real GPU answers here")
    def test_declared_gpus_without_nvml_are_none_not_zero(self) -> None:
        assert gpu_usage(["0", "1"]) is None

    @pytest.mark.skipif(not _nvml_present(), reason="needs NVML and a GPU")
    def test_a_real_gpu_through_nvml(self) -> None:
        import pynvml

        found = gpu_usage(["0"])
        assert found is not None
        util, used = found
        assert 0.0 <= util <= 100.0 and used >= 0
        pynvml.nvmlInit()
        try:
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        assert gpu_usage([uuid]) is not None  # CUDA_VISIBLE_DEVICES may name GPUs by UUID
        assert gpu_usage(["999"]) is None  # a GPU NVML does not know: none, not zero


class Collector(BaseHTTPRequestHandler):
    """A loopback stand-in for the control plane's metrics endpoint."""

    batches: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.batches.append((self.path, {"auth": self.headers["Authorization"], **body}))
        self.send_response(202)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


class Refuser(Collector):
    """Answers as the control plane does to the token of an ended attempt."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.batches.append((self.path, {}))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _env(url: str, interval: float = 0.2) -> dict[str, str]:
    return {
        "KAON_API_URL": url,
        "KAON_JOB_ID": "j-1",
        "KAON_JOB_TOKEN": "kj_secret",
        "KAON_WORKER_INDEX": "3",
        "KAON_USAGE_INTERVAL_S": str(interval),
        "CUDA_VISIBLE_DEVICES": "",
    }


class TestUsageReporter:
    def test_posts_batches_with_the_job_token(self, tree: subprocess.Popen[bytes]) -> None:
        Collector.batches = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            reporter = UsageReporter.start(tree.pid, _env(url))
            assert reporter is not None
            deadline = time.monotonic() + 20
            while len(Collector.batches) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            reporter.close()
        finally:
            server.shutdown()
        path, first = Collector.batches[0]
        assert path == "/api/v1/jobs/j-1/metrics"
        assert first["auth"] == "Bearer kj_secret" and first["worker"] == 3
        values = first["points"][0]["values"]
        assert set(values) == {CPU, RSS}  # no GPU allocated: no GPU values at all
        assert len(Collector.batches[1][1]["points"]) == 2  # later ones are batched

    def test_a_refused_token_ends_the_reporting(self) -> None:
        Refuser.batches = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), Refuser)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            reporter = UsageReporter.start(proc.pid, _env(url, 0.05))
            assert reporter is not None
            reporter._thread.join(10)  # an ended job's token never works again: it stops
            assert not reporter._thread.is_alive()
            assert len(Refuser.batches) == 1
        finally:
            server.shutdown()
            proc.kill()
            proc.wait()

    def test_a_control_plane_that_is_away_holds_nothing_up(self) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            reporter = UsageReporter.start(proc.pid, _env(_nobody_listens(), 0.05))
            assert reporter is not None
            time.sleep(0.5)
            started = time.monotonic()
            reporter.close(timeout=5)
            assert time.monotonic() - started < 5
        finally:
            proc.kill()
            proc.wait()

    def test_no_token_or_interval_zero_means_no_reporter(self) -> None:
        env = _env("http://127.0.0.1:9")
        assert UsageReporter.start(1, {**env, "KAON_JOB_TOKEN": ""}) is None
        assert UsageReporter.start(1, {**env, "KAON_USAGE_INTERVAL_S": "0"}) is None
        assert interval_of({}) == 5.0 and interval_of({"KAON_USAGE_INTERVAL_S": "x"}) == 5.0


def _nobody_listens() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
