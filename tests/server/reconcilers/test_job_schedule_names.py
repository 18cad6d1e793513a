"""Reasons name workspaces as people know them."""

from __future__ import annotations

from kaon.server.reconcilers.job_schedule import with_names

NAMES = {"ws-1a2e3b4c5d6e": "team-a", "ws-0f0f0f0f0f0f": "team-b"}


def test_every_known_id_becomes_its_name() -> None:
    reason = "quota: workspace ws-1a2e3b4c5d6e would use 4 GPUs; lent by ws-0f0f0f0f0f0f"
    assert with_names(reason, NAMES) == "quota: workspace team-a would use 4 GPUs; lent by team-b"


def test_an_unknown_id_and_other_words_stay() -> None:
    reason = "reclaimed: workspace ws-abcdef123456 needs its quota for j-1a2e3b4c5d6e"
    assert with_names(reason, NAMES) == reason
    assert with_names("no fitting node for 2 GPUs", NAMES) == "no fitting node for 2 GPUs"
