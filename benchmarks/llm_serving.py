"""LLM serving, side by side in one run: Kaon's LLM endpoint vs a hand-written endpoint.

The same model (``examples/char_lm``'s character transformer, random weights, fixed seed)
served several ways, each on one PyTorch thread:

- **kaon**: an `LLMService` replica (continuous batching, KV cache) behind the gateway,
  ``POST /llm/v1/completions`` with ``"stream": true``; and **kaon-direct**, the same
  replica without the gateway, to see what the gateway adds;
- **hand**: what users write by hand, a FastAPI endpoint that streams from a per-request
  generate loop (the model's own ``forward`` over the window for each token, as nanoGPT's
  ``generate`` does), run by Starlette in its thread pool;
- **ray-serve**: that same endpoint as a Ray Serve deployment (one replica, up to 64
  requests at once), measured after the others on a Ray instance of its own (``--no-ray``
  skips it).

Each of C concurrent clients (1, 8, 32) streams ``--requests`` completions of ``--tokens``
tokens, one after the other; reported: output tokens/s over the run, time to first token
and inter-token latency (p50/p99, as the client sees them). Then one ``--long``-token
stream through the gateway, with the gateway's memory (RSS) before and after.

    .venv/bin/python benchmarks/llm_serving.py                    # about 5 minutes
    .venv/bin/python benchmarks/llm_serving.py --concurrency 1 8 --requests 2

Clients, gateway and servers share the machine's cores: on a small box the numbers are
the whole system's, which this benchmark does not hide. This file is also the module the
replica imports (``llm_serving:BenchChat``) and the hand-written server (``--serve-hand``).
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ALPHABET = (
    " \n" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + ".,:;!?'-()0123456789"
)
PROMPT = "Permission is hereby granted"
SHAPE = {"vocab": len(ALPHABET), "block": 1100, "dim": 128, "layers": 4}


def build_model() -> Any:
    import importlib.util

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location(
        "char_lm_model", HERE.parent / "examples" / "llm" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CharTransformer(**SHAPE).eval()


# --- the Kaon side: the whole service -------------------------------------------------

try:
    from kaon.llm import CachedDecoder, CharTokenizer, DecoderLM, LLMService, Tokenizer

    class BenchChat(LLMService):
        model_name = "bench"
        slots = 32
        max_queue = 256

        def load(self) -> tuple[DecoderLM, Tokenizer]:
            return CachedDecoder(build_model(), self.slots), CharTokenizer(ALPHABET)

except ImportError:  # the benchmark driver runs without torch only to print usage
    pass


# --- the hand-written side -------------------------------------------------------------


def hand_generate(model: Any, body: dict[str, Any]) -> Any:
    """The per-request generate loop users write: the whole window through ``forward`` for
    every token (no cache), one server-sent event per token."""
    import torch

    idx = torch.tensor([[ALPHABET.index(c) for c in body["prompt"] if c in ALPHABET]])
    for _ in range(int(body["max_tokens"])):
        with torch.no_grad():  # each step may run on another thread of the pool
            logits = model(idx[:, -SHAPE["block"] :])[0, -1]
        token = int(torch.argmax(logits))
        idx = torch.cat([idx, torch.tensor([[token]])], dim=1)
        choice = {"text": ALPHABET[token], "index": 0, "finish_reason": None}
        yield f"data: {json.dumps({'choices': [choice]})}\n\n"
    yield "data: [DONE]\n\n"


def serve_hand(port: int) -> None:
    """FastAPI + a per-request generate loop, streamed as server-sent events."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    model = build_model()
    app = FastAPI()

    @app.post("/v1/completions")
    async def complete(request: Request) -> StreamingResponse:
        body = await request.json()
        return StreamingResponse(hand_generate(model, body), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop")


def serve_ray(port: int) -> None:
    """The same hand-written endpoint as a Ray Serve deployment (one replica, up to 64
    requests at once), on a Ray instance of its own that it shuts down on SIGTERM."""
    import ray
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from ray import serve

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=64)
    @serve.ingress(app)
    class Hand:
        def __init__(self) -> None:
            self.model = build_model()

        @app.post("/v1/completions")
        async def complete(self, request: Request) -> StreamingResponse:
            body = await request.json()
            stream = hand_generate(self.model, body)
            return StreamingResponse(stream, media_type="text/event-stream")

    def stop(*_: Any) -> None:
        serve.shutdown()
        ray.shutdown()  # stops the processes this ray.init started, and only those
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    # a Ray instance of its own ("local"), never one that happens to run on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=f"/tmp/kaon-bench-ray-{os.getpid()}")  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Hand.bind(), route_prefix="/")
    while True:
        time.sleep(60)


# --- the driver --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout} s")


def wait_answer(url: str, timeout: float) -> None:
    """Until a one-token completion succeeds (Ray's proxy answers 404 before the app is in)."""
    import httpx

    body = {"prompt": PROMPT, "max_tokens": 1}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=body, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering after {timeout} s")


@dataclass
class Result:
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def one(client: Any, url: str, tokens: int, result: Result) -> None:
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    start = time.perf_counter()
    last = None
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if not json.loads(line[6:])["choices"][0]["text"]:
                continue
            now = time.perf_counter()
            if last is None:
                result.ttft.append(now - start)
            else:
                result.gaps.append(now - last)
            last = now
            result.tokens += 1


async def load(url: str, concurrency: int, requests: int, tokens: int) -> Result:
    import httpx

    result = Result()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one(client, url, 4, Result())  # warm up

        async def worker() -> None:
            for _ in range(requests):
                await one(client, url, tokens, result)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def row(name: str, c: int, r: Result) -> str:
    return (
        f"| {name} | {c} | {r.tokens / r.seconds:,.0f} | {pct(r.ttft, 50):.1f} | "
        f"{pct(r.ttft, 99):.1f} | {pct(r.gaps, 50):.2f} | {pct(r.gaps, 99):.2f} |"
    )


def ray_rows(args: argparse.Namespace) -> None:
    """Ray Serve after the others, so its cluster's processes do not idle beside them."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve-ray", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        wait_answer(url, timeout=300)
        for c in args.concurrency:
            print(row("ray-serve", c, asyncio.run(load(url, c, args.requests, args.tokens))),
                  flush=True)  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2, help="per client")
    parser.add_argument("--tokens", type=int, default=64, help="per completion")
    parser.add_argument("--long", type=int, default=1000, help="tokens of the memory check")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve")
    parser.add_argument("--serve-hand", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-ray", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hand is not None:
        serve_hand(args.serve_hand)
        return
    if args.serve_ray is not None:
        serve_ray(args.serve_ray)
        return

    procs: list[subprocess.Popen[bytes]] = []
    py = sys.executable
    try:
        rport, gport, hport = free_port(), free_port(), free_port()
        replica = [py, "-m", "kaon.serving.runtime", "--service", "llm_serving:BenchChat",
                   "--path", str(HERE), "--port", str(rport)]  # fmt: skip
        procs.append(subprocess.Popen(replica))
        routes = Path(tempfile.mkdtemp()) / "routes.json"
        table = {"version": 1, "routes": [{"name": "llm", "replicas": [f"http://127.0.0.1:{rport}"],
                 "public": True, "max_concurrency": 256, "max_queue": 1024,
                 "request_timeout_s": 600}]}  # fmt: skip
        routes.write_text(json.dumps(table))
        gateway = subprocess.Popen([py, "-m", "kaon.gateway", "--routes", str(routes),
                                    "--port", str(gport)], stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(gateway)
        procs.append(subprocess.Popen([py, __file__, "--serve-hand", str(hport)]))
        wait_ready(f"http://127.0.0.1:{rport}/ready")
        wait_ready(f"http://127.0.0.1:{gport}/healthz")
        wait_ready(f"http://127.0.0.1:{hport}/docs")
        systems = {
            "kaon": f"http://127.0.0.1:{gport}/llm/v1/completions",
            "kaon-direct": f"http://127.0.0.1:{rport}/v1/completions",
            "hand": f"http://127.0.0.1:{hport}/v1/completions",
        }
        print(f"model: char transformer {SHAPE}, {args.tokens} tokens per completion, "
              f"{args.requests} completions per client\n")  # fmt: skip
        print(
            "| system | clients | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in args.concurrency:
            for name, url in systems.items():
                r = asyncio.run(load(url, c, args.requests, args.tokens))
                print(row(name, c, r), flush=True)
        if not args.no_ray:
            ray_rows(args)
        before = rss_kib(gateway.pid)
        r = asyncio.run(load(systems["kaon"], 1, 1, args.long))
        after = rss_kib(gateway.pid)
        print(f"\none {r.tokens}-token stream through the gateway: gateway RSS "
              f"{before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after")  # fmt: skip
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
