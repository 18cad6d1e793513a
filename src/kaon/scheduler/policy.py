"""The entry point the control plane calls: `schedule(snapshot) -> Decisions`.

`schedule` runs Kaon's full policy unless another one is asked for by name or as a policy
object (`schedule(snapshot, policy="easy")`, `schedule(snapshot, policy=KaonPolicy(...))`).
The baselines exist so that the simulator can compare them with Kaon through this very
function; the control plane needs only the default.

`place_gang` and `fits_anywhere` are kept here for callers that imported them from this
module; they live in `capacity.py`.
"""

from __future__ import annotations

from kaon.scheduler.capacity import FreeIndex, place_gang
from kaon.scheduler.capacity import fits_anywhere as fits_anywhere
from kaon.scheduler.engine import run_pass
from kaon.scheduler.model import Decisions, Snapshot
from kaon.scheduler.policies import KaonPolicy, Policy, get_policy

__all__ = ["DEFAULT_POLICY", "FreeIndex", "fits_anywhere", "place_gang", "schedule"]

DEFAULT_POLICY = KaonPolicy()


def schedule(snapshot: Snapshot, policy: Policy | str = DEFAULT_POLICY) -> Decisions:
    """Decide which pending workloads start where, whom to preempt, and why others wait."""
    if isinstance(policy, str):
        policy = get_policy(policy)
    return run_pass(snapshot, policy)
