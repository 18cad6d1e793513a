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

What the gateway adds (``--gateway-only``): kaon and kaon-direct only, in ``--rounds``
alternating rounds (gateway, direct, direct, gateway, ...) so that the machine's load drifts
over both alike, and the difference of their TTFT and ITL medians per concurrency.
``--baseline REF`` runs a second gateway in front of the same replica with the code of git
revision REF, so a change to the gateway is measured against the old one in the same run:

    .venv/bin/python benchmarks/llm_serving.py --gateway-only --rounds 6 --baseline HEAD

The gateway's own work, free of scheduling noise (``--gateway-cost``): a replica stand-in
that answers each request with a one-chunk stream at once, the gateway and a client, all on
one event loop in this process, so the time to the first chunk through the gateway less
the time straight to the stand-in is the gateway's CPU on the way (no model, no other
process to wait for):

    .venv/bin/python benchmarks/llm_serving.py --gateway-cost

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


def baseline_tree(ref: str) -> Path:
    """The ``src`` folder of git revision `ref`, extracted to a temporary folder."""
    root = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", ref, "src/kaon"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "src"


def start_gateway(routes: Path, port: int, src: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if src is not None:  # another revision's kaon package first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "kaon.gateway", "--routes", str(routes), "--port", str(port)]
    return subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)


def cpu_s(pid: int) -> float:
    """User and system CPU time a process used so far (noise-free, unlike latencies)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def overhead_rows(
    systems: dict[str, str], gateways: dict[str, int], args: argparse.Namespace
) -> None:
    """Each system once per round, the order reversed every other round; then the
    medians of all rounds together, each gateway's difference to kaon-direct, and the
    CPU time each gateway process spent per streamed token."""
    names = list(systems)
    for c in args.concurrency:
        merged = {name: Result() for name in names}
        cpu = dict.fromkeys(gateways, 0.0)
        for i in range(args.rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                before = cpu_s(gateways[name]) if name in gateways else 0.0
                r = asyncio.run(load(systems[name], c, args.requests, args.tokens))
                if name in gateways:
                    cpu[name] += cpu_s(gateways[name]) - before
                m = merged[name]
                m.tokens += r.tokens
                m.seconds += r.seconds
                m.ttft += r.ttft
                m.gaps += r.gaps
        for name in names:
            print(row(name, c, merged[name]), flush=True)
        direct = merged["kaon-direct"]
        for name in names:
            if name != "kaon-direct":
                r = merged[name]
                ttft = pct(r.ttft, 50) - pct(direct.ttft, 50)
                itl = pct(r.gaps, 50) - pct(direct.gaps, 50)
                per_token = cpu.get(name, 0.0) / max(1, r.tokens) * 1e6
                print(f"  {name} adds at {c} clients: TTFT p50 {ttft:+.2f} ms, "
                      f"ITL p50 {itl:+.3f} ms ({len(r.ttft)} requests); gateway CPU "
                      f"{per_token:.0f} us per token", flush=True)  # fmt: skip


_STAND_IN_CHUNK = b'data: {"choices":[{"index":0,"text":"a"}]}\n\n'
_STAND_IN_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(_STAND_IN_CHUNK), _STAND_IN_CHUNK)
)


class _StandIn(asyncio.Protocol):
    """A replica that streams one chunk the moment a request is in."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(_STAND_IN_REPLY)


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.first: asyncio.Future[float] | None = None
        self.done: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.first and not self.first.done() and b"data:" in self.buffer:
            self.first.set_result(time.perf_counter())
        if self.done and not self.done.done() and self.buffer.endswith(b"0\r\n\r\n"):
            self.done.set_result(None)


async def _first_chunks(port: int, path: bytes, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    reader = _Reader()
    transport, _ = await loop.create_connection(lambda: reader, "127.0.0.1", port)
    request = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}" % path
    times = []
    for _ in range(n):
        reader.buffer, reader.first, reader.done = b"", loop.create_future(), loop.create_future()
        start = time.perf_counter()
        transport.write(request)
        times.append(await reader.first - start)
        await reader.done
    transport.close()
    return times


async def gateway_cost(n: int = 2000) -> None:
    from kaon.core.gateway import RouteTable
    from kaon.gateway.app import Gateway
    from kaon.gateway.server import GatewayServer
    from kaon.gateway.sources import StaticRouteSource

    loop = asyncio.get_running_loop()
    stand_in = await loop.create_server(_StandIn, "127.0.0.1", 0)
    rport = stand_in.sockets[0].getsockname()[1]
    table = RouteTable.model_validate({"version": 1, "routes": [{"name": "llm", "public": True,
        "replicas": [f"http://127.0.0.1:{rport}"], "max_concurrency": 256}]})  # fmt: skip
    gateway = Gateway(StaticRouteSource(table))
    gport = free_port()
    server = GatewayServer(gateway, "127.0.0.1", gport)
    await server.start()
    await gateway.startup()
    await asyncio.sleep(0.3)  # the route table is in
    for _ in range(3):
        direct = sorted(await _first_chunks(rport, b"/v1/completions", n))[n // 2] * 1e6
        via = sorted(await _first_chunks(gport, b"/llm/v1/completions", n))[n // 2] * 1e6
        print(f"first chunk p50 over {n} requests: direct {direct:.0f} us, through the "
              f"gateway {via:.0f} us: the gateway's work adds {via - direct:.0f} us")  # fmt: skip
    await gateway.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2, help="per client")
    parser.add_argument("--tokens", type=int, default=64, help="per completion")
    parser.add_argument("--long", type=int, default=1000, help="tokens of the memory check")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve")
    parser.add_argument("--gateway-only", action="store_true", help="kaon vs kaon-direct")
    parser.add_argument("--rounds", type=int, default=4, help="with --gateway-only")
    parser.add_argument("--baseline", default=None, help="also a gateway of this git ref")
    parser.add_argument("--gateway-cost", action="store_true", help="the gateway's own work")
    parser.add_argument("--serve-hand", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-ray", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hand is not None:
        serve_hand(args.serve_hand)
        return
    if args.serve_ray is not None:
        serve_ray(args.serve_ray)
        return
    if args.gateway_cost:
        import uvloop

        uvloop.run(gateway_cost())
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
        gateway = start_gateway(routes, gport)
        procs.append(gateway)
        systems = {
            "kaon": f"http://127.0.0.1:{gport}/llm/v1/completions",
            "kaon-direct": f"http://127.0.0.1:{rport}/v1/completions",
        }
        gateways = {"kaon": gateway.pid}
        if args.baseline:
            bport = free_port()
            procs.append(start_gateway(routes, bport, baseline_tree(args.baseline)))
            gateways[f"kaon@{args.baseline}"] = procs[-1].pid
            wait_ready(f"http://127.0.0.1:{bport}/healthz")
            systems[f"kaon@{args.baseline}"] = f"http://127.0.0.1:{bport}/llm/v1/completions"
        if not args.gateway_only:
            procs.append(subprocess.Popen([py, __file__, "--serve-hand", str(hport)]))
            wait_ready(f"http://127.0.0.1:{hport}/docs")
            systems["hand"] = f"http://127.0.0.1:{hport}/v1/completions"
        wait_ready(f"http://127.0.0.1:{rport}/ready")
        wait_ready(f"http://127.0.0.1:{gport}/healthz")
        print(f"model: char transformer {SHAPE}, {args.tokens} tokens per completion, "
              f"{args.requests} completions per client\n")  # fmt: skip
        print(
            "| system | clients | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        if args.gateway_only:
            overhead_rows(systems, gateways, args)
            return
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
