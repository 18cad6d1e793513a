"""A Ray cluster of several nodes on this one machine, to try Kaon's Ray pool without
servers: a head that runs nothing and two worker nodes of 2 CPUs each.

    python examples/ray_pool/cluster.py          # prints the address, runs until Ctrl-C

Then, in another terminal: ``kaon up --ray-address <address>`` (see docs/pool.md).
On real machines you would run ``ray start --head`` on one and ``ray start --address``
on the others instead.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# A cluster for trying things out: no token authentication (Ray 2.60 turns it on for a
# new local cluster when ~/.ray/auth_token exists). Real clusters should keep it on and
# give the control plane the token (RAY_AUTH_TOKEN), see docs/pool.md.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray.cluster_utils import Cluster  # after the environment is set

GIB = 2**30


def main() -> int:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
        connect=False,
    )
    for zone in ("a", "b"):
        cluster.add_node(num_cpus=2, memory=2 * GIB, labels={"zone": zone})
    print(f"Ray cluster with 2 worker nodes at {cluster.address}", flush=True)
    print(f"attach it:  kaon up --ray-address {cluster.address}", flush=True)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
