"""Every policy by its name, for `schedule(pool, policy="...")` and `kaon sim --policy`."""

from __future__ import annotations

from kaon.scheduler.gittins import GittinsPolicy
from kaon.scheduler.policies import (
    EasyPolicy,
    FifoPolicy,
    KaonPolicy,
    LasPolicy,
    Policy,
    SrtfPolicy,
)
from kaon.scheduler.sharing import KaiPolicy, KueueFairPolicy, KueuePolicy

POLICIES: dict[str, type[Policy]] = {
    "kaon": KaonPolicy,
    "fifo": FifoPolicy,
    "easy": EasyPolicy,
    "las": LasPolicy,
    "gittins": GittinsPolicy,
    "srtf": SrtfPolicy,
    "kueue": KueuePolicy,
    "kueue-fair": KueueFairPolicy,
    "kai": KaiPolicy,
}


def get_policy(name: str, restart_penalty_s: float = 60.0) -> Policy:
    """The policy called `name`, with its defaults; ValueError lists the valid names."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    if cls in (KaonPolicy, SrtfPolicy):
        return cls(restart_penalty_s=restart_penalty_s)
    return cls()
