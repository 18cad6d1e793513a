"""A deployment's replica: its lifecycle and the variables it is started with.

One vocabulary on both sides. The control plane's deployment reconciler drives a replica
through the whole machine; the replica process itself (`kaon.serving`) only ever is
STARTING (its ``setup()`` runs), READY or FAILED (``setup()`` raised), and says which on
``/ready``. This module imports nothing but the standard library and Kaon's errors, so a
replica pays nothing for it at cold start.

    STARTING -> READY <-> UNHEALTHY          (health probes pass / fail)
    STARTING | READY | UNHEALTHY -> STOPPING -> STOPPED
    STARTING | READY | UNHEALTHY | STOPPING -> FAILED   (its process ended on its own,
                                                         or it never became ready)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from kaon.core.errors import IllegalTransitionError

ENV_REPLICA_ID = "KAON_REPLICA_ID"
ENV_DEPLOYMENT = "KAON_DEPLOYMENT"
ENV_MODEL_DIR = "KAON_MODEL_DIR"
"""Set by the control plane for a replica: its id, its deployment's name, and for a
deployment served from a job, the folder of that job's checkpoints."""

ENV_PORT = "KAON_PORT"
ENV_NODE_ADDRESS = "KAON_NODE_ADDRESS"
"""Set by every executor for every worker: a free port kept for it on its node, and the
address at which other nodes (the gateway among them) reach that node. A replica listens
there."""

ENV_REPLICA_KEY = "KAON_REPLICA_KEY"
REPLICA_KEY_HEADER = "x-kaon-replica-key"
"""A replica's own credential, and the header that carries it. The control plane derives
one per replica attempt and hands it to the replica process in its environment (never in a
file); the gateway adds it to every request it forwards, and the control plane to its
health probes. A replica started with one refuses every request without it, so a local
process cannot call a replica's port directly and skip the gateway's token check. Without
one (``kaon serve``, no control plane) a replica is open."""

HELLO_PATH = "/.kaon/hello"
CHALLENGE_HEADER = "x-kaon-replica-challenge"
PROOF_HEADER = "x-kaon-replica-proof"
"""How a replica proves it holds its credential before it is sent one. A port is only a
number: when a replica's process ends, a process of another workspace on the same node
may bind its port before the route table drops it, and would then receive the requests
(and the credential) meant for the replica. So on each new connection the gateway, and
each health probe, first asks ``GET HELLO_PATH`` with a fresh random challenge and no
credential; only a process that answers with `proof` of it (an HMAC keyed by the
credential) is sent anything else. The answer is no oracle worth having: a process that
can ask the replica holding a key is not on that replica's port."""

_PROOF_CONTEXT = b"kaon-replica-proof:"
MAX_CHALLENGE = 64  # characters: a hex nonce of 32 bytes


def challenge() -> str:
    """A fresh random challenge for `proof`."""
    return secrets.token_hex(16)


def proof(key: str, challenge: str) -> str:
    """What a replica holding `key` answers to `challenge` (hex HMAC-SHA256, kept apart
    from any other use of the key by its context)."""
    return hmac.new(key.encode(), _PROOF_CONTEXT + challenge.encode(), hashlib.sha256).hexdigest()


def proves(key: str, challenge: str, answer: str | bytes | None) -> bool:
    """Whether `answer` proves `key` for `challenge` (compared in constant time)."""
    if answer is None:
        return False
    given = answer.decode("latin-1") if isinstance(answer, bytes) else answer
    return hmac.compare_digest(given, proof(key, challenge))


class ReplicaStatus(enum.StrEnum):
    """Lifecycle of one replica. Only READY replicas are in the gateway's route table."""

    STARTING = "starting"  # launched; waiting for its first passing health check
    READY = "ready"  # serving traffic
    UNHEALTHY = "unhealthy"  # failed health checks; out of the route table
    STOPPING = "stopping"  # asked to stop; draining in-flight requests
    STOPPED = "stopped"  # gone, as asked
    FAILED = "failed"  # exited, crashed or never ready; a new one starts with back-off

    def is_live(self) -> bool:
        """Counts towards the deployment's replicas (it may serve, now or soon)."""
        return self in _LIVE

    def is_terminal(self) -> bool:
        return self in (ReplicaStatus.STOPPED, ReplicaStatus.FAILED)

    def can_become(self, new: ReplicaStatus) -> bool:
        return new in _NEXT[self]

    def check_transition(self, new: ReplicaStatus) -> None:
        if not self.can_become(new):
            raise IllegalTransitionError(f"a replica cannot go from {self.value} to {new.value}")


_LIVE = frozenset({ReplicaStatus.STARTING, ReplicaStatus.READY, ReplicaStatus.UNHEALTHY})
_ENDS = frozenset({ReplicaStatus.STOPPING, ReplicaStatus.FAILED})
_NEXT: dict[ReplicaStatus, frozenset[ReplicaStatus]] = {
    ReplicaStatus.STARTING: frozenset({ReplicaStatus.READY}) | _ENDS,
    ReplicaStatus.READY: frozenset({ReplicaStatus.UNHEALTHY}) | _ENDS,
    ReplicaStatus.UNHEALTHY: frozenset({ReplicaStatus.READY}) | _ENDS,
    ReplicaStatus.STOPPING: frozenset({ReplicaStatus.STOPPED, ReplicaStatus.FAILED}),
    ReplicaStatus.STOPPED: frozenset(),
    ReplicaStatus.FAILED: frozenset(),
}
LIVE_STATES = tuple(sorted(_LIVE))
