"""`kaon.report(step=..., loss=...)`: metrics from inside a job, to the control plane.

A job learns where to send its metrics from the environment the executor gives every
worker (``KAON_API_URL``, ``KAON_JOB_ID``, ``KAON_JOB_TOKEN``, ``KAON_WORKER_INDEX``).
Outside a Kaon job those are missing and `report` does nothing, so the same training
script runs under ``python train.py`` too.

Reporting must never slow or break training: values go onto an in-memory queue and a
daemon thread posts them in batches. If the control plane is down (it may restart at any
time), the batch is retried for a while and then dropped; the job keeps running. The
queue is flushed when the process exits. Only the standard library is used, so importing
`kaon` inside a job stays cheap.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import threading
import time
from typing import Any

__all__ = ["report", "flush"]

_MAX_BATCH = 500
_RETRY_FOR_S = 30.0


class _Reporter:
    """Batches metric points and posts them to ``/api/v1/jobs/{id}/metrics``."""

    def __init__(self, url: str, job_id: str, token: str, worker: int) -> None:
        self._endpoint = f"{url.rstrip('/')}/api/v1/jobs/{job_id}/metrics"
        self._token = token
        self._worker = worker
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="kaon-report", daemon=True)
        self._thread.start()

    def put(self, point: dict[str, Any]) -> None:
        self._idle.clear()
        self._queue.put(point)

    def flush(self, timeout: float = 10.0) -> None:
        self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
            if batch:
                self._post(batch)
            if self._queue.empty():
                self._idle.set()

    def _post(self, batch: list[dict[str, Any]]) -> None:
        import urllib.error  # here, not at import: `import kaon` must stay cheap in a job
        import urllib.request

        body = json.dumps({"worker": self._worker, "points": batch}).encode()
        request = urllib.request.Request(
            self._endpoint,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        context = None
        if self._endpoint.startswith("https:"):  # verified by the launch's certificate
            from kaon.core.tls import ENV_CA_PEM, client_context

            context = client_context(ca_pem=os.environ.get(ENV_CA_PEM) or None)
        deadline = time.monotonic() + _RETRY_FOR_S
        delay = 0.2
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    response.read()
                return
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    return  # rejected for good (bad value, job gone): retrying will not help
            except OSError:
                pass  # the control plane may be restarting
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


_lock = threading.Lock()
_reporter: _Reporter | None = None
_disabled = False


def _get_reporter() -> _Reporter | None:
    global _reporter, _disabled
    if _reporter is not None or _disabled:
        return _reporter
    with _lock:
        if _reporter is None and not _disabled:
            url, job, token = (
                os.environ.get(k) for k in ("KAON_API_URL", "KAON_JOB_ID", "KAON_JOB_TOKEN")
            )
            if not (url and job and token):
                _disabled = True
                return None
            worker = int(os.environ.get("KAON_WORKER_INDEX", "0"))
            _reporter = _Reporter(url, job, token, worker)
            atexit.register(_reporter.flush)
    return _reporter


def report(step: int | None = None, **metrics: float) -> None:
    """Record metric values for this job at `step` (for example ``loss`` and ``accuracy``).

    >>> report(step=10, loss=0.31, accuracy=0.92)

    Values must be real numbers; NaN and infinities are dropped, since JSON cannot carry
    them. Outside a Kaon job this does nothing.
    """
    if step is not None and (not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            try:
                value = float(value)  # numpy and torch scalars
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {name!r} must be a number, got {type(value).__name__}"
                ) from None
        if math.isfinite(value):
            values[name] = float(value)
    reporter = _get_reporter()
    if reporter is None or not values:
        return
    reporter.put({"step": step, "time": time.time(), "values": values})


def flush(timeout: float = 10.0) -> None:
    """Wait until every reported value has been sent (or given up on)."""
    reporter = _get_reporter()
    if reporter is not None:
        reporter.flush(timeout)
