"""``python -m kaon.executors.ray.bridge``: the Ray driver of one pool, in a process of
its own.

The control plane never imports Ray. Each attached cluster gets a bridge: a child process
that connects to the cluster, keeps one agent per node (`agent.NodeAgent`), reserves what
Kaon places there, and answers the `RayExecutor`'s requests over its stdin and stdout
(`wire`). Keeping Ray out of the control plane's process bounds what a cluster can do to
it: a ``ray.init`` that hangs on a dead address, a driver killed when the cluster goes,
and the one-cluster-per-process rule are all the bridge's problem, and a bridge that dies
is simply started again; its agents and their workers carry on and are found by name.

Connecting: ``ray://host:port`` goes through Ray Client. ``host:port`` (a GCS) needs a Ray
node on this machine, since a driver talks to its local raylet: when this machine is not
one of the cluster's nodes yet, the bridge joins it as a node with no CPUs and no GPUs
(label ``kaon.io/role=control-plane``, so Kaon never places work there) and leaves again
when it exits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaon.core.errors import BackendError, PermanentBackendError, TemporaryBackendError
from kaon.core.nodes import GpuInfo
from kaon.executors.base import NodeInventory, WorkerState
from kaon.executors.ray import wire
from kaon.executors.ray.agent import NodeAgent, code_fingerprint, placement_group_name

NAMESPACE = "kaon"
ROLE_LABEL = "kaon.io/role"
CONTROL_PLANE = "control-plane"
PROBE_S = 3.0
RESERVE_S = 5.0  # a reservation Ray has not made by then is reported, and tried again
AGENT_S = 15.0
CALL_S = 30.0
WAIT_CHANGED_S = 5.0
AGENT_LINGER_S = 10.0  # an elastic pool's agent with no worker goes after this long
_INTERNAL_LABELS = ("ray.io/node-id",)


class Fatal(Exception):
    """The bridge cannot work: say why and exit (the executor starts it again later)."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Config:
    pool: str
    address: str
    node_dir: str  # where agents keep run folders on their node ('~' is the node's home)
    state_dir: str  # this machine's folder for the bridge (the joined node's temp dir)

    @staticmethod
    def from_env() -> Config:
        data = json.loads(os.environ["KAON_RAY_BRIDGE"])
        return Config(**data)


class Out:
    """stdout, one JSON object per line, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream = sys.stdout
        sys.stdout = sys.stderr  # nothing else may write on the protocol's stream

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


# -- connecting --------------------------------------------------------------------------


def probe(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as e:
        raise Fatal(
            TemporaryBackendError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}")
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def local_ip_towards(address: str) -> str:
    """This machine's address on the route to the cluster (no packet is sent)."""
    host, port = _host_port(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


def has_local_node(address: str) -> bool:
    """Whether a raylet of this cluster runs here, on an address of this network
    namespace (a raylet of a namespace we cannot reach does not count)."""
    import psutil

    mine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    host, port = _host_port(address)
    gcs = {f"{host}:{port}"}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if not any("raylet" in part for part in cmd[:1]) and proc.info["name"] != "raylet":
            continue
        args = {
            k.replace("_", "-"): v
            for k, v in (a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        }  # raylets spell some flags with '_' (--node_ip_address), others with '-'
        if args.get("--gcs-address") in gcs and args.get("--node-ip-address") in mine:
            return True
    return False


def join(config: Config) -> str:
    """Make this machine a node of the cluster with nothing to offer, so a driver can run
    here. Returns the address it joined on."""
    ip = local_ip_towards(config.address)
    temp = Path(config.state_dir) / "ray"
    temp.mkdir(parents=True, exist_ok=True)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    argv = [
        ray_cli, "start", f"--address={config.address}", "--num-cpus=0", "--num-gpus=0",
        f"--node-ip-address={ip}", f"--temp-dir={temp}", f"--labels={ROLE_LABEL}={CONTROL_PLANE}",
        "--disable-usage-stats", "--object-store-memory=78643200",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise Fatal(TemporaryBackendError("cannot join the Ray cluster: " + " | ".join(tail)))
    return ip


def leave(config: Config) -> None:
    """Stop the node `join` started: only the processes of its own temp dir."""
    import psutil

    marker = str(Path(config.state_dir) / "ray")
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            continue


def connect(config: Config) -> bool:
    """``ray.init`` for the pool's address. True when this bridge joined the cluster."""
    probe(config.address)
    import ray

    kwargs: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": False,
        "logging_level": "WARNING",
        "configure_logging": False,
    }
    joined = False
    try:
        if config.address.startswith("ray://"):
            ray.init(config.address, **kwargs)
        else:
            if not has_local_node(config.address):
                kwargs["_node_ip_address"] = join(config)
                joined = True
            ray.init(address=config.address, **kwargs)
    except RuntimeError as e:
        if "version" in str(e).lower():
            error = PermanentBackendError(f"the Ray cluster runs another version: {e}")
            raise Fatal(error) from None
        raise Fatal(TemporaryBackendError(f"cannot connect to the Ray cluster: {e}")) from None
    except Exception as e:
        raise Fatal(TemporaryBackendError(f"cannot connect to the Ray cluster: {e}")) from None
    return joined


# -- the bridge ---------------------------------------------------------------------------


@dataclass
class RayNode:
    kaon_id: str
    ray_id: str
    address: str
    resources: dict[str, float]
    labels: dict[str, str]
    alive: bool
    death: str


class Bridge:
    def __init__(self, config: Config, out: Out) -> None:
        import ray

        self.ray: Any = ray  # Ray's own annotations do not cover remote handles
        self.config = config
        self.out = out
        self.nodes: dict[str, RayNode] = {}
        self.agents: dict[str, Any] = {}
        self.problems: dict[str, str] = {}  # node -> why its agent is not up
        self.gpus: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._agent_class: Any = ray.remote(NodeAgent)
        self.fingerprint = code_fingerprint()
        # With an autoscaler, agents start with a node's first worker and go when it has
        # none (a node with an actor is never idle to Ray); without, they stay.
        self.elastic = self.op_elastic()

    # -- requests ----------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        try:
            t0 = time.perf_counter()
            result = getattr(self, f"op_{request['op']}")(**request.get("args", {}))
            if os.environ.get("KAON_BRIDGE_TIMING"):
                took = 1000 * (time.perf_counter() - t0)
                print(f"{request['op']} {took:.1f} ms", file=sys.stderr, flush=True)
            self.out.send({"id": rid, "ok": result})
        except Exception as e:
            self.out.send({"id": rid, "error": wire.error_to_wire(_backend_error(e))})

    def op_inventory(self) -> list[dict[str, Any]]:
        self._refresh_nodes()
        with self._lock:
            nodes = list(self.nodes.values())
        for node in nodes:
            if node.alive and not self.elastic:
                self._ensure_agent(node)
        return [wire.node_to_wire(self._inventory(n)) for n in nodes]

    def op_elastic(self) -> bool:
        """Whether an autoscaler with node types runs for this cluster. Every head runs a
        monitor; one without an autoscaling config reports each node as a type of its
        own (``node_<id>``), one with a config names its node types."""
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        try:
            status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or "{}")
        except Exception:
            return False
        types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
        return any(kind != f"node_{node}" for node, kind in types.items())

    def op_launch(self, gang: dict[str, Any]) -> list[dict[str, Any]]:
        launch = wire.gang_from_wire(gang)
        order = list(
            dict.fromkeys(w.node_id for w in sorted(launch.workers, key=lambda w: w.index))
        )
        nodes = [self._node(n) for n in order]
        agents = [self._agent(n) for n in nodes]
        groups = [self._reservation(launch, n) for n in nodes]  # asked for all at once
        data = dict(gang)
        if len(nodes) > 1:  # the rendezvous on worker 0's node; one node picks its own
            port = agents[0].gang_port.remote(launch.job_id, launch.attempt)
            data["master"] = [nodes[0].address, int(self._call(port))]
        self._reserved(launch, groups, nodes)
        answers = self._call([a.launch.remote(data) for a in agents], timeout=300)
        states = [
            _prefix(n.kaon_id, s) for n, answer in zip(nodes, answers, strict=True) for s in answer
        ]
        return sorted(states, key=lambda s: int(s["handle"].rsplit("/", 1)[1]))

    def op_status(self, handles: list[str]) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node_id, inner in _by_node(handles).items():
            node = self.nodes.get(node_id)
            if node is None or not node.alive:
                why = node.death if node else "it is no longer in the Ray cluster"
                for h in inner:
                    out[f"{node_id}/{h}"] = wire.state_to_wire(_lost(f"{node_id}/{h}", why))
                continue
            for s in self._call(self._agent(node).status.remote(inner)):
                out[f"{node_id}/{s['handle']}"] = _prefix(node_id, s)
        return [out[h] for h in handles]

    def op_stop(self, handles: list[str], grace_s: float) -> None:
        for node_id, inner in _by_node(handles).items():
            node = self.nodes.get(node_id)
            if node is not None and node.alive:
                self._call(self._agent(node).stop.remote(inner, grace_s))

    def op_logs(self, handle: str, offset: int, limit: int) -> str:
        node_id, _, inner = handle.partition("/")
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return ""
        return str(self._call(self._agent(node).logs.remote(inner, offset, limit)))

    def op_request_capacity(self, bundles: list[dict[str, float]]) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)

    # -- nodes and agents ------------------------------------------------------------------

    def _refresh_nodes(self) -> None:
        found: dict[str, RayNode] = {}
        for n in self.ray.nodes():
            labels = {str(k): str(v) for k, v in (n.get("Labels") or {}).items()}
            resources = {str(k): float(v) for k, v in (n.get("Resources") or {}).items()}
            if labels.get(ROLE_LABEL) == CONTROL_PLANE:
                continue
            if resources.get("CPU", 0) <= 0 and resources.get("GPU", 0) <= 0 and n["Alive"]:
                continue  # a head kept free of work
            ray_id = str(n["NodeID"])
            kaon_id = node_name(self.config.pool, ray_id)
            if not n["Alive"] and kaon_id in found:
                continue  # a dead entry never hides the live one of the same id
            found[kaon_id] = RayNode(
                kaon_id=kaon_id,
                ray_id=ray_id,
                address=str(n["NodeManagerAddress"]),
                resources=resources,
                labels={k: v for k, v in labels.items() if k not in _INTERNAL_LABELS},
                alive=bool(n["Alive"]),
                death=str(n.get("DeathReasonMessage") or "it left the Ray cluster"),
            )
        with self._lock:
            self.nodes = found

    def _ensure_agent(self, node: RayNode) -> None:
        if node.kaon_id in self.agents:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            handle = self._agent_class.options(
                name=f"agent-{node.kaon_id}",
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=-1,
                max_concurrency=64,
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.ray_id, soft=False),
            ).remote(self.config.pool, node.kaon_id, node.address, self.config.node_dir)
            info = self.ray.get(handle.info.remote(), timeout=AGENT_S)
        except Exception as e:
            if _just_joined(e):
                return  # a node that has just joined may not take pinned work yet: retry
            self.problems[node.kaon_id] = _agent_problem(e)
            return
        if info.get("code") != self.fingerprint:
            # An agent of another Kaon: the next pass starts ours. Its workers carry on
            # (their supervisors left its process tree) and the new agent adopts them.
            self.ray.kill(handle)
            self.problems[node.kaon_id] = (
                f"its agent runs other Kaon code ({info.get('version')}, "
                f"{info.get('code')}); starting a new one"
            )
            return
        self.problems.pop(node.kaon_id, None)
        self.gpus[node.kaon_id] = list(info.get("gpus", []))
        with self._lock:
            self.agents[node.kaon_id] = handle

    def _inventory(self, node: RayNode) -> NodeInventory:
        count = int(node.resources.get("GPU", 0))
        found = self.gpus.get(node.kaon_id, [])
        model = next(
            (k.split(":", 1)[1] for k in node.resources if k.startswith("accelerator_type:")),
            "GPU",
        )
        gpus = tuple(
            GpuInfo.model_validate(found[i])
            if i < len(found)
            else GpuInfo(index=i, model=model, memory=0)
            for i in range(count)
        )
        problem = self.problems.get(node.kaon_id)
        ready = node.alive and (node.kaon_id in self.agents or (self.elastic and not problem))
        if not node.alive:
            message = f"dead: {node.death}"
        else:
            message = "" if ready else self.problems.get(node.kaon_id, "its agent is starting")
        return NodeInventory(
            id=node.kaon_id,
            name=node.kaon_id,
            address=node.address,
            cpu=node.resources.get("CPU", 0.0),
            memory=int(node.resources.get("memory", 0)),
            gpus=gpus,
            labels={
                **node.labels,
                "kaon.io/pool": self.config.pool,
                "ray.io/node-id": node.ray_id,
            },
            ready=ready,
            message=message,
        )

    def _node(self, kaon_id: str) -> RayNode:
        node = self.nodes.get(kaon_id)
        if node is None or not node.alive:
            raise TemporaryBackendError(f"node {kaon_id} is not in the Ray cluster now")
        return node

    def _agent(self, node: RayNode) -> Any:
        agent = self.agents.get(node.kaon_id)
        if agent is None:
            self._ensure_agent(node)  # an elastic pool's node gets its agent on first use
            agent = self.agents.get(node.kaon_id)
        if agent is None:
            why = self.problems.get(node.kaon_id, "it is not up yet")
            raise TemporaryBackendError(f"the agent on node {node.kaon_id}: {why}")
        return agent

    def _reservation(self, gang: Any, node: RayNode) -> Any:
        """The placement group that holds the gang's workers' resources on `node` in Ray,
        made if it is not there yet. Ray's accounting (and its autoscaler, which would
        otherwise see the node idle and remove it) then agrees with Kaon's."""
        from ray.util import get_placement_group, placement_group

        name = placement_group_name(gang.job_id, gang.attempt, node.kaon_id)
        try:
            return get_placement_group(name)
        except ValueError:
            bundles = [_bundle(w) for w in gang.workers if w.node_id == node.kaon_id]
            return placement_group(
                bundles,
                strategy="PACK",
                name=name,
                lifetime="detached",
                bundle_label_selector=[{"ray.io/node-id": node.ray_id}] * len(bundles),
            )

    def _reserved(self, gang: Any, groups: list[Any], nodes: list[RayNode]) -> None:
        """Wait until Ray has made every reservation of the gang (milliseconds)."""
        try:
            self.ray.get([g.ready() for g in groups], timeout=RESERVE_S)
        except self.ray.exceptions.GetTimeoutError:
            names = ", ".join(n.kaon_id for n in nodes)
            raise TemporaryBackendError(
                f"Ray has not reserved the job's resources on {names} within "
                f"{RESERVE_S:g} s (other Ray work may hold them); trying again"
            ) from None

    def _call(self, ref: Any, timeout: float = CALL_S) -> Any:
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise TemporaryBackendError(
                f"a node agent did not answer within {timeout:g} s"
            ) from None

    # -- telling the executor that a worker ended ------------------------------------------

    def watch(self) -> None:
        """Keep one `wait_changed` call open per agent; when one returns True, tell the
        executor at once (it polls anyway, but a second is long for a job that took 0.1)."""
        pending: dict[Any, str] = {}
        while True:
            with self._lock:
                agents = dict(self.agents)
            armed = set(pending.values())
            for node_id, agent in agents.items():
                if node_id not in armed:
                    pending[agent.wait_changed.remote(WAIT_CHANGED_S)] = node_id
            if not pending:
                time.sleep(0.5)
                continue
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                node_id = pending.pop(ref, "")
                try:
                    answer = self.ray.get(ref)
                except Exception:
                    answer = {"changed": True, "idle_s": 0.0}  # it restarted: look again
                if answer["changed"]:
                    ended = [_prefix(node_id, st) for st in answer.get("ended", [])]
                    self.out.send({"event": "changed", "ended": ended})
                if self.elastic and answer["idle_s"] > AGENT_LINGER_S:
                    self._let_go(node_id)

    def _let_go(self, node_id: str) -> None:
        """Stop an idle node's agent, so the autoscaler may remove the node."""
        with self._lock:
            agent = self.agents.pop(node_id, None)
        if agent is not None:
            self.ray.kill(agent)


def node_name(pool: str, ray_id: str) -> str:
    """A Ray node's id in Kaon: short, and unique even for ids that share a long prefix
    (an autoscaler's fake nodes are ``fff...f00001``, ``fff...f00002``)."""
    return f"{pool}-{ray_id[:6]}{ray_id[-6:]}"


def _bundle(w: Any) -> dict[str, float]:
    bundle: dict[str, float] = {"CPU": float(w.cpu), "memory": float(w.memory)}
    if w.gpus:
        bundle["GPU"] = float(len(w.gpus))
    return bundle


def _by_node(handles: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for handle in handles:
        node_id, _, inner = handle.partition("/")
        out.setdefault(node_id, []).append(inner)
    return out


def _prefix(node_id: str, state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "handle": f"{node_id}/{state['handle']}"}


def _lost(handle: str, why: str) -> WorkerState:
    return WorkerState(handle, alive=False, reason=f"lost: its node died ({why})", lost=True)


def _just_joined(error: Exception) -> bool:
    """Ray refuses work pinned to a node it does not schedule on yet, as if it were gone."""
    return "NodeAffinitySchedulingStrategy doesn't exist any more or is infeasible" in str(error)


def _agent_problem(error: Exception) -> str:
    text = str(error)
    if "No module named 'kaon" in text or "ModuleNotFoundError" in text and "kaon" in text:
        return (
            "Kaon is not installed on this node: install the same kaon version as the "
            "control plane in the Python that runs Ray there"
        )
    first = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    return f"its agent cannot start: {first[:300]}"


def _backend_error(error: Exception) -> BackendError:
    if isinstance(error, BackendError):
        return error
    return TemporaryBackendError(f"{type(error).__name__}: {str(error)[:500]}")


def main() -> int:
    out = Out()
    config = Config.from_env()
    try:
        joined = connect(config)
    except Fatal as e:
        out.send({"event": "fatal", "error": wire.error_to_wire(e.error)})
        return 2
    try:
        bridge = Bridge(config, out)
        local_ip = local_ip_towards(config.address)
        out.send({"event": "ready", "elastic": bridge.op_elastic(), "local_ip": local_ip})
        threading.Thread(target=bridge.watch, name="watch", daemon=True).start()
        with ThreadPoolExecutor(max_workers=16) as pool:
            for line in sys.stdin:
                if line.strip():
                    pool.submit(bridge.handle, json.loads(line))
    finally:
        if joined:
            leave(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
