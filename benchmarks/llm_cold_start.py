"""Cold start of a one-command LLM deployment, from zero: control plane, gateway and a
replica of ``kaon.llm.ready:ModelDirLLM`` serving a registered Hugging Face folder, all
real processes.

A tiny random Llama (built here from a config, nothing downloaded) is pushed to the model
registry as an artifact, deployed as ``kaon deploy create --llm --model tiny:1`` would, and
scaled to zero. Then one ``/v1/chat/completions`` request is sent through the gateway and
timed until its answer: demand report, autoscaler, scheduler, replica start (Python,
torch, transformers), the model loaded from the materialised, verified artifact, health
probe, route table, the held request forwarded and 8 tokens decoded.

    .venv/bin/python benchmarks/llm_cold_start.py [--runs 3] [--poll 0.25]

The split is `serve_cold_start.py`'s: *to spawn*, *replica* (until ``/ready``), *to answer*.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from serve_cold_start import Watcher, _port, _until

from kaon.sdk.client import Client

TEXT = ["the quick brown fox jumps over the lazy dog", "a journey of a thousand miles"] * 20


def tiny_llama(path: Path) -> Path:
    """A 2-layer random Llama and a byte-level BPE tokenizer, saved with save_pretrained."""
    import tokenizers
    import torch
    import transformers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, special_tokens=["<eos>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--poll", type=float, default=0.25, help="gateway route poll, s (kaon up: 0.25)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-llm-cold-"))
    cp_port, gw_port, token = _port(), _port(), "kaon_bench-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "KAON_HOME": str(home),
        "KAON_PORT": str(cp_port),
        "KAON_BOOTSTRAP_TOKEN": token,
        "KAON_GATEWAY_TOKEN": token,
    }
    cp_url, gw_url = f"http://127.0.0.1:{cp_port}", f"http://127.0.0.1:{gw_port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([sys.executable, "-m", "kaon.server"], env=env, **quiet)]  # type: ignore[call-overload]
    client = Client(cp_url, token=token)
    try:
        _until(client.healthy, 60)
        gateway = [sys.executable, "-m", "kaon.gateway", "--port", str(gw_port),
                   "--control-plane", cp_url, "--poll", str(args.poll)]  # fmt: skip
        procs.append(subprocess.Popen(gateway, env=env, **quiet))  # type: ignore[call-overload]
        version = client.models.push("tiny", tiny_llama(home / "tiny-llama"))
        scaling = {
            "min_replicas": 0,
            "max_replicas": 1,
            "scale_to_zero_after_s": 1,
            "scale_down_delay_s": 0.5,
        }
        client.deployments.create(
            "cold",
            service="kaon.llm.ready:ModelDirLLM",
            model=version.ref,
            spec={"resources": {"cpu": 1}, "autoscaling": scaling},
        )
        body = {
            "model": "cold",
            "messages": [{"role": "user", "content": "the quick brown fox"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        times = []
        for _ in range(args.runs):
            _until(lambda: client.deployments.get("cold").status == "scaled-to-zero", 120)
            _until(
                lambda: all(
                    r.state in ("stopped", "failed")
                    for r in client.deployments.get("cold").replicas
                ),
                60,
            )
            watcher = Watcher(home)
            t0 = time.perf_counter()
            r = httpx.post(
                f"{gw_url}/cold/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=180,
            )
            t1 = time.perf_counter()
            watcher.stop()
            times.append(t1 - t0)
            assert r.status_code == 200, r.text
            spawn, ready = watcher.spawned or t0, watcher.ready or t1
            usage = r.json()["usage"]["completion_tokens"]
            print(
                f"LLM cold start from zero: {times[-1]:.2f} s = to spawn {spawn - t0:.2f} "
                f"+ replica {ready - spawn:.2f} + to answer {t1 - ready:.2f} "
                f"({usage} tokens)",
                flush=True,
            )
        print(
            f"median {statistics.median(times):.2f} s over {len(times)} runs; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    finally:
        with contextlib.suppress(Exception):
            client.deployments.delete("cold")
        time.sleep(3)
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        for path in home.glob("runs/*/*/*/child.json"):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(json.loads(path.read_text())["pid"]), signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
