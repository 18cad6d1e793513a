"""Replicas for ``tests/llm/test_vllm_engine.py`` (``--path tests/llm/standin``)."""

from __future__ import annotations

from kaon.llm.ready import ModelDirLLM


class OneInQueue(ModelDirLLM):
    """`ModelDirLLM` with room for one waiting request: the next one gets 429."""

    max_queue = 1
