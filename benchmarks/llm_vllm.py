"""vLLM behind Kaon's OpenAI API against vLLM's own OpenAI server: same model, same GPU.

Needs a CUDA GPU and vLLM (``pip install 'kaon[vllm]'``); on a machine without either it
stops at once, saying which is missing.

    python benchmarks/llm_vllm.py                       # ~1B Llama, 1/8/32 clients
    python benchmarks/llm_vllm.py --shape tiny --concurrency 1 8 --requests 2   # smoke run
    python benchmarks/llm_vllm.py --model DIR --json out.json

The model, unless ``--model`` names a Hugging Face folder: a Llama built here from a config
with random weights (nothing downloaded): ``--shape 1b`` is TinyLlama's shape (22 layers,
hidden 2048, 32 heads, 4 KV heads; about 1.0B parameters with an 8k vocabulary) in
bfloat16, with a byte-level BPE tokenizer trained here. Its end-of-text row of ``lm_head``
is zeroed, so greedy decoding never picks it (a logit of 0 among thousands of random ones)
and every completion runs to ``--tokens`` on both systems alike.

The systems, one after the other, each alone on the GPU with the same engine arguments
(``--gpu-memory-utilization``, ``--max-model-len``; the rest vLLM's defaults):

- **vllm**: ``python -m vllm.entrypoints.openai.api_server --model DIR``;
- **kaon**: a replica of ``kaon.llm.ready:ModelDirLLM`` with ``KAON_LLM_ENGINE=vllm``
  (what ``kaon deploy create --llm --hf-path DIR --env KAON_LLM_ENGINE=vllm`` runs), called
  through the gateway; and **kaon-direct**, the same replica without the gateway, to see
  what the gateway adds.

The clients are ``benchmarks/llm_serving.py``'s: C concurrent clients (1, 8, 32) each
stream ``--requests`` completions of ``--tokens`` tokens (``/v1/completions``,
``"stream": true``, temperature 0) one after the other. Reported: output tokens/s over the
run, time to first token and inter-token latency (p50/p99, as the client sees them), and
kaon's tokens/s over vllm's (the goal: at least 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llm_serving as serving  # noqa: E402  (the clients and measures of llm_serving.py)

GOAL = 0.95
NAME = "bench"  # the model name both servers answer to (llm_serving's clients send it)
SHAPES: dict[str, dict[str, int]] = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
           "num_attention_heads": 32, "num_key_value_heads": 4},
    "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 4},
}  # fmt: skip
VOCAB = 8192


def preflight() -> None:
    """Stop at once, with the reason, where the benchmark cannot run."""
    if importlib.util.find_spec("vllm") is None:
        sys.exit("llm_vllm: vLLM is not installed: pip install 'kaon[vllm]' (needs a CUDA GPU)")
    import torch

    if not torch.cuda.is_available():
        sys.exit("llm_vllm: no CUDA GPU here (torch.cuda.is_available() is False)")


def corpus(words: int = 200_000) -> list[str]:
    """Pseudo-words from a fixed seed: enough distinct pairs for a BPE of `VOCAB` tokens."""
    rng = random.Random(0)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [26 - i for i in range(26)]
    lines, line = [], []
    for _ in range(words):
        line.append("".join(rng.choices(letters, weights, k=rng.randint(1, 9))))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return lines


def build_model(path: Path, shape: str, context: int) -> Path:
    """A random Llama of `shape` and its tokenizer, saved with ``save_pretrained``."""
    import tokenizers
    import torch
    import transformers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=VOCAB, special_tokens=["<eos>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<eos>"
    )
    eos = tokenizer.eos_token_id
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=context, eos_token_id=eos,
        bos_token_id=None, tie_word_embeddings=False, **SHAPES[shape],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()  # greedy never ends a completion early
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(f"model: random Llama '{shape}', {params / 1e9:.2f}B parameters, "
          f"vocabulary {len(tokenizer)}, saved in {path}", flush=True)  # fmt: skip
    return path


@contextlib.contextmanager
def process(
    argv: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own process group, ended with everything it started (vLLM's engine
    core is a child process holding the GPU)."""
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def measure(name: str, url: str, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for c in args.concurrency:
        r = asyncio.run(serving.load(url, c, args.requests, args.tokens))
        print(serving.row(name, c, r), flush=True)
        rows[c] = {
            "tokens_per_s": r.tokens / r.seconds,
            "ttft_p50_ms": serving.pct(r.ttft, 50), "ttft_p99_ms": serving.pct(r.ttft, 99),
            "itl_p50_ms": serving.pct(r.gaps, 50), "itl_p99_ms": serving.pct(r.gaps, 99),
            "tokens": r.tokens, "seconds": r.seconds,
        }  # fmt: skip
    return rows


def engine_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"gpu_memory_utilization": args.gpu_memory_utilization,
            "max_model_len": args.max_model_len}  # fmt: skip


def run_vllm(model: Path, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    port = serving.free_port()
    flags = engine_flags(args)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port),
            "--gpu-memory-utilization", str(flags["gpu_memory_utilization"]),
            "--max-model-len", str(flags["max_model_len"])]  # fmt: skip
    with process(argv):
        serving.wait_ready(f"http://127.0.0.1:{port}/health", timeout=args.start_timeout)
        return measure("vllm", f"http://127.0.0.1:{port}/v1/completions", args)


def run_kaon(model: Path, args: argparse.Namespace) -> dict[str, dict[int, dict[str, float]]]:
    rport, gport = serving.free_port(), serving.free_port()
    env = {"KAON_MODEL_DIR": str(model), "KAON_DEPLOYMENT": NAME, "KAON_LLM_ENGINE": "vllm",
           "KAON_VLLM_ARGS": json.dumps(engine_flags(args))}  # fmt: skip
    replica = [sys.executable, "-m", "kaon.serving.runtime", "--service",
               "kaon.llm.ready:ModelDirLLM", "--port", str(rport)]  # fmt: skip
    routes = Path(tempfile.mkdtemp()) / "routes.json"
    table = {"version": 1, "routes": [{"name": "llm", "replicas": [f"http://127.0.0.1:{rport}"],
             "public": True, "max_concurrency": 256, "max_queue": 1024,
             "request_timeout_s": 600}]}  # fmt: skip
    routes.write_text(json.dumps(table))
    with process(replica, env):
        gateway = serving.start_gateway(routes, gport)
        try:
            serving.wait_ready(f"http://127.0.0.1:{rport}/ready", timeout=args.start_timeout)
            serving.wait_ready(f"http://127.0.0.1:{gport}/healthz")
            return {
                "kaon": measure("kaon", f"http://127.0.0.1:{gport}/llm/v1/completions", args),
                "kaon-direct": measure(
                    "kaon-direct", f"http://127.0.0.1:{rport}/v1/completions", args
                ),
            }
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(10)


def versions() -> dict[str, str]:
    import torch
    import vllm

    return {"vllm": str(vllm.__version__), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face folder")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--tokens", type=int, default=128, help="per completion")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    preflight()
    model = args.model or build_model(
        Path(tempfile.mkdtemp(prefix="llm-vllm-")), args.shape, args.max_model_len
    )
    print(f"\n{args.tokens} tokens per completion, {args.requests} completions per client\n")
    print("| system | clients | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    results = {"vllm": run_vllm(model, args), **run_kaon(model, args)}
    ratio = {
        c: results["kaon"][c]["tokens_per_s"] / results["vllm"][c]["tokens_per_s"]
        for c in args.concurrency
    }
    print()
    for c, value in ratio.items():
        verdict = "meets" if value >= GOAL else "misses"
        print(f"{c} clients: kaon/vllm tokens/s = {value:.3f} ({verdict} the goal of {GOAL})")
    if args.json is not None:
        report = {
            "model": str(args.model) if args.model else f"random Llama '{args.shape}'",
            "tokens": args.tokens, "requests_per_client": args.requests,
            "engine": engine_flags(args), "versions": versions(), "results": results,
            "ratio_kaon_over_vllm": ratio, "goal": GOAL,
        }  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
