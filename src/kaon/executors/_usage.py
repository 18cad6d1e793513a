"""A worker's resource usage, sampled by its supervisor (`_shim`) and sent to the control
plane with the job's own token.

Every `interval` seconds a daemon thread samples the worker's whole process tree (CPU in
cores, resident memory) and, where GPUs were allocated (``CUDA_VISIBLE_DEVICES``), their
utilisation and memory through NVML. Samples wait in a bounded buffer and are posted in
batches to the metrics endpoint `kaon.report` uses, under reserved ``sys/`` names
(`kaon.core.usage`). The worker never waits for any of it: a control plane that is away
only means samples pile up (the oldest are dropped past `MAX_PENDING`) until it answers;
a refusal (the attempt's token is no longer valid) drops them.

Standard library and psutil only, as the supervisor; pynvml (nvidia-ml-py) is imported
only when a worker has GPUs. Names mirror `kaon.core.usage`, which this module cannot
import without pydantic.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

CPU, RSS = "sys/cpu", "sys/rss_bytes"  # kaon.core.usage
GPU_UTIL, GPU_MEM = "sys/gpu_util", "sys/gpu_mem_bytes"
INTERVAL_ENV = "KAON_USAGE_INTERVAL_S"  # set by the control plane; 0 turns sampling off
DEFAULT_INTERVAL_S = 5.0
MAX_PENDING = 720  # samples kept while the control plane is away (an hour at 5 s)
POST_EVERY = 2  # samples per batch (the first is sent at once)
POST_TIMEOUT_S = 2.0


class TreeSampler:
    """CPU (cores) and resident memory of a process and all its descendants.

    CPU is the growth of the tree's CPU time between two samples over the wall time
    between them: a process born meanwhile counts from zero, one that ended meanwhile
    drops out (its last moments are not counted; they are at most one interval). Processes
    are known by pid and start time, so a reused pid is a new process."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self._pid = pid
        self._cpu: dict[tuple[int, float], float] = {}
        self._at = time.monotonic()
        self.sample()

    def sample(self) -> tuple[float, int]:
        """(cores busy since the last sample, resident bytes now)."""
        psutil = self._psutil
        now = time.monotonic()
        try:
            root = psutil.Process(self._pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        cpu: dict[tuple[int, float], float] = {}
        busy, rss = 0.0, 0
        for proc in tree:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
            cpu[key] = times.user + times.system
            busy += max(0.0, cpu[key] - self._cpu.get(key, 0.0))
        elapsed = max(now - self._at, 1e-6)
        self._cpu, self._at = cpu, now
        return busy / elapsed, rss


def gpu_usage(devices: list[str]) -> tuple[float, int] | None:
    """(mean utilisation in percent, memory used in bytes) of these GPUs (NVML indices or
    ``GPU-...`` UUIDs, as in ``CUDA_VISIBLE_DEVICES``), or None when NVML cannot see them
    (no driver, or GPUs only declared with ``KAON_NODE_GPUS``): nothing is made up.

    The GPUs are the worker's alone (Kaon allocates whole GPUs), so the device-wide
    figures are the worker's."""
    if not devices:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        utils, used = [], 0
        for device in devices:
            if device.startswith(("GPU-", "MIG-")):
                handle = pynvml.nvmlDeviceGetHandleByUUID(device)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
            utils.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            used += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        return sum(utils) / len(utils), used
    except Exception:  # a GPU NVML does not know (declared ones), a broken driver
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def interval_of(env: dict[str, str]) -> float:
    """The sampling interval the control plane asked for (0: no sampling)."""
    try:
        return max(0.0, float(env.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _tls_context(env: dict[str, str]) -> Any:
    """Verifies the control plane by the certificate the launch names (``KAON_CA_PEM``),
    as the supervisor does (`_shim.api_tls_context`)."""
    import ssl

    context = ssl.create_default_context(cadata=env.get("KAON_CA_PEM") or None)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class UsageReporter:
    """Samples the tree of `pid` every `interval` seconds and posts the samples in batches
    to the job's metrics endpoint, on a daemon thread of its own."""

    def __init__(self, pid: int, env: dict[str, str], interval: float) -> None:
        url = env["KAON_API_URL"].rstrip("/")
        self._endpoint = f"{url}/api/v1/jobs/{env['KAON_JOB_ID']}/metrics"
        self._token = env["KAON_JOB_TOKEN"]
        self._tls = _tls_context(env) if url.startswith("https:") else None
        self._worker = int(env.get("KAON_WORKER_INDEX", "0"))
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        self._gpus = [d.strip() for d in visible.split(",") if d.strip()]
        self._pid, self._interval = pid, interval
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING)
        self._sent_any = False
        self._refused = False  # the token no longer works: it never will again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaon-usage", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, pid: int, env: dict[str, str]) -> UsageReporter | None:
        """A reporter for the worker `pid`, or None when the launch gives no way to report
        (no job token: a test's bare launch) or sampling is off."""
        interval = interval_of(env)
        if not interval or not all(env.get(k) for k in ("KAON_API_URL", "KAON_JOB_ID")):
            return None
        if not env.get("KAON_JOB_TOKEN"):
            return None
        return cls(pid, env, interval)

    def close(self, timeout: float = 1.0) -> None:
        """Stop sampling and send what is pending, waiting at most `timeout` seconds (the
        attempt's token stops working once its end is recorded, so this comes first)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            sampler = TreeSampler(self._pid)
        except Exception:  # psutil cannot see the worker: report nothing, harm nothing
            return
        while not self._refused and not self._stop.wait(self._interval):
            try:
                self._pending.append(self._sample(sampler))
            except Exception:  # pragma: no cover - a sample missed, the next one may not be
                continue
            if not self._sent_any or len(self._pending) >= POST_EVERY:
                self._post()
        if self._pending and not self._refused:
            self._post()

    def _sample(self, sampler: TreeSampler) -> dict[str, Any]:
        cores, rss = sampler.sample()
        values: dict[str, float] = {CPU: round(cores, 4), RSS: float(rss)}
        gpu = gpu_usage(self._gpus)
        if gpu is not None:
            values[GPU_UTIL], values[GPU_MEM] = gpu[0], float(gpu[1])
        return {"time": time.time(), "values": values}

    def _post(self) -> None:
        import urllib.error
        import urllib.request

        batch = list(self._pending)
        body = json.dumps({"worker": self._worker, "points": batch}).encode()
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self._endpoint, body, headers, method="POST")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._tls)
        )
        try:
            with opener.open(request, timeout=POST_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                return  # the control plane is unwell: keep them for the next try
            self._refused = e.code in (401, 403)  # a later attempt's or an ended job's
        except (OSError, ValueError):
            return  # away (restarting, unreachable): keep them
        for _ in batch:  # sent, or refused for good (a bad sample, or the token)
            self._pending.popleft()
        self._sent_any = True
