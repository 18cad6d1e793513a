"""The messages between the Ray executor (in the control plane) and its bridge process:
JSON lines on the bridge's stdin and stdout.

```
 control plane                         bridge (Ray driver)                 each node
 RayExecutor --{"id": 7, "op": ...}--> dispatch -> ray.get(agent.op()) --> NodeAgent
            <--{"id": 7, "ok": ...}---
            <--{"event": "changed"}--  (a worker ended somewhere: look again now)
            <--{"event": "ready", ...} (connected) / {"event": "fatal", ...} (cannot)
```

Errors come back as ``{"id": 7, "error": {"kind": "temporary"|"permanent", "message":
...}}`` and are raised again as `TemporaryBackendError` / `PermanentBackendError`.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from kaon.core.errors import BackendError, PermanentBackendError, TemporaryBackendError
from kaon.core.nodes import GpuInfo
from kaon.executors.base import GangLaunch, NodeInventory, WorkerLaunch, WorkerState

HANDLE_SEPARATOR = "/"


def gang_to_wire(gang: GangLaunch) -> dict[str, Any]:
    return asdict(gang)


def gang_from_wire(data: dict[str, Any]) -> GangLaunch:
    workers = tuple(
        WorkerLaunch(
            index=int(w["index"]),
            node_id=str(w["node_id"]),
            cpu=float(w["cpu"]),
            memory=int(w["memory"]),
            gpus=tuple(int(g) for g in w["gpus"]),
        )
        for w in data["workers"]
    )
    master = data.get("master")
    return GangLaunch(
        job_id=str(data["job_id"]),
        attempt=int(data["attempt"]),
        command=tuple(data["command"]),
        env=dict(data["env"]),
        workers=workers,
        snapshot=data.get("snapshot"),
        stop_grace_s=float(data.get("stop_grace_s", 10.0)),
        snapshot_sha256=data.get("snapshot_sha256"),
        master=(str(master[0]), int(master[1])) if master else None,
    )


def state_to_wire(state: WorkerState) -> dict[str, Any]:
    return asdict(state)


def state_from_wire(data: dict[str, Any]) -> WorkerState:
    return WorkerState(
        handle=str(data["handle"]),
        alive=bool(data["alive"]),
        pid=data.get("pid"),
        exit_code=data.get("exit_code"),
        reason=data.get("reason"),
        port=data.get("port"),
        lost=bool(data.get("lost", False)),
    )


def node_to_wire(node: NodeInventory) -> dict[str, Any]:
    data = asdict(node)
    data["gpus"] = [g.model_dump() for g in node.gpus]
    return data


def node_from_wire(data: dict[str, Any]) -> NodeInventory:
    return NodeInventory(
        id=str(data["id"]),
        name=str(data["name"]),
        address=str(data["address"]),
        cpu=float(data["cpu"]),
        memory=int(data["memory"]),
        gpus=tuple(GpuInfo.model_validate(g) for g in data.get("gpus", [])),
        labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
        ready=bool(data.get("ready", True)),
        message=str(data.get("message", "")),
    )


def error_to_wire(error: BaseException) -> dict[str, str]:
    kind = "permanent" if isinstance(error, PermanentBackendError) else "temporary"
    message = (
        error.message if isinstance(error, BackendError) else f"{type(error).__name__}: {error}"
    )
    return {"kind": kind, "message": message}


def error_from_wire(data: dict[str, Any]) -> BackendError:
    message = str(data.get("message", "the Ray bridge failed"))
    if data.get("kind") == "permanent":
        return PermanentBackendError(message)
    return TemporaryBackendError(message)


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode_bytes(data: str) -> bytes:
    return base64.b64decode(data)
