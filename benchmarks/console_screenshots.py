"""Screenshots of every console page, for docs/console.md: what a user sees.

Starts a real control plane on a fresh home (one node of 16 CPUs, 64 GiB and four
declared GPUs), fills it with a small team's day (two workspaces with quotas, a training
job that reports its loss, a job that waits for GPUs, finished and failed jobs, a
deployment behind a real gateway with traffic that scales it, secrets), then opens each
page in Debian's Chromium through Playwright and saves it.

    .venv/bin/python benchmarks/console_screenshots.py [--out docs/img] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import Page, sync_playwright

from kaon.sdk.client import Client
from kaon.server.app import create_app
from kaon.server.config import Settings, normalize_database_url
from kaon.server.services.history import INTERVAL_ENV

TOKEN = "kaon_shots-admin-" + "x" * 24
TRAIN = """
import math, random, time, kaon
for step in range(100000):
    loss = 2.2 * math.exp(-step / 40) + 0.15 + random.uniform(-0.03, 0.03)
    acc = 0.97 - 0.85 * math.exp(-step / 50) + random.uniform(-0.01, 0.01)
    print(f"epoch {step // 20} step {step:5d} loss {loss:.4f} accuracy {acc:.3f}", flush=True)
    kaon.report(step=step, loss=loss, accuracy=acc)
    time.sleep(0.05 if step < 150 else 1)
"""
SLEEP = [
    "python",
    "-c",
    "import time\nwhile True: print('serving', flush=True); time.sleep(5)",
]
# The pool's GPUs are declared (NVML sees none), so this job reports its utilisation
# itself, under the reserved name and with its own token, as a worker's supervisor does
# where NVML measures it: the overview's utilisation chart then has a line to draw.
GPU_BUSY = [
    "python",
    "-c",
    "import math, os, time, httpx\n"
    "e = os.environ\n"
    "url = f\"{e['KAON_API_URL']}/api/v1/jobs/{e['KAON_JOB_ID']}/metrics\"\n"
    "auth = {'Authorization': f\"Bearer {e['KAON_JOB_TOKEN']}\"}\n"
    "while True:\n"
    "    util = 78 + 15 * math.sin(time.time() / 9)\n"
    "    point = {'time': time.time(), 'values': {'sys/gpu_util': util}}\n"
    "    httpx.post(url, json={'points': [point]}, headers=auth)\n"
    "    time.sleep(2)\n",
]
SERVICE = """
import kaon


class Model(kaon.Service):
    @kaon.handler
    def predict(self, x: list[float]) -> list[float]:
        if any(v < 0 for v in x):
            raise ValueError("this model takes no negative numbers")
        return [2 * v for v in x]
"""


def serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = settings.with_(port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{settings.port}"


def until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the scene did not come together")
        time.sleep(0.2)


def stage(url: str, home: Path) -> dict[str, str]:
    """A team's day on the pool; answers the ids the screenshots open."""
    admin = Client(url, token=TOKEN)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
    for ws in ("vision", "nlp"):
        admin.workspaces.create(ws)
    http.put("/api/v1/quotas/vision", json={"gpus": 2, "cpus": 8, "memory": "32Gi"})
    http.put(
        "/api/v1/quotas/nlp", json={"gpus": 2, "cpus": 4, "memory": "32Gi", "borrow_limit": 1}
    )
    vision = Client(url, token=TOKEN, workspace="vision")
    nlp = Client(url, token=TOKEN, workspace="nlp")
    py = "python"
    done = vision.jobs.submit(
        [py, "-c", "print('preprocessed 50000 images')"], name="prep-imagenet", cpu=2
    )
    vision.jobs.wait(done.id, timeout=60)
    bad = vision.jobs.submit(
        [py, "-c", "raise SystemExit('CUDA out of memory')"], name="resnet-bs512", cpu=1
    )
    vision.jobs.wait(bad.id, timeout=60)
    train = vision.jobs.submit([py, "-c", TRAIN], name="resnet50", cpu=4, memory="8Gi", gpus=2)
    nlp.jobs.submit(GPU_BUSY, name="bert-finetune", cpu=4, memory="16Gi", gpus=2)
    # Over nlp's 4 CPUs of quota: it borrows 3 of the 4 that vision leaves unused.
    nlp.jobs.submit(SLEEP, name="tokenize-corpus", cpu=3, memory="4Gi")
    waits = nlp.jobs.submit(SLEEP, name="lr-sweep", cpu=2, memory="8Gi", gpus=2)
    svc = home / "svc"
    svc.mkdir()
    (svc / "model.py").write_text(SERVICE)
    admin.deployments.create(
        "doubler",
        service="model:Model",
        path=svc,
        spec={
            "resources": {"cpu": 0.5, "memory": "1Gi"},
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_rps": 5,
                "scale_up_delay_s": 3,
                "scale_down_delay_s": 10,
            },
        },
    )
    until(lambda: vision.jobs.get(train.id).status.value == "running")
    until(lambda: len(vision.jobs.metrics(train.id)) > 200)
    for name, value in [("wandb-api-key", "x1"), ("hf-token", "x2"), ("hf-token", "x3")]:
        http.put(f"/api/v1/workspaces/vision/secrets/{name}", json={"value": value})
    http.put("/api/v1/workspaces/vision/secrets/db-password", json={"value": "x4"})
    for version, (layers, alias) in enumerate([(50, "staging"), (50, "production")], 1):
        folder = home / f"resnet-{version}"
        folder.mkdir()
        (folder / "config.json").write_text(f'{{"arch": "resnet", "layers": {layers}}}')
        (folder / "model.safetensors").write_bytes(os.urandom(3 * 2**20 + version))
        (folder / "preprocessor.json").write_text('{"size": 224}')
        vision.models.push("resnet50", folder, alias=alias, description="ImageNet classifier")
    data = home / "imagenet-val"
    data.mkdir()
    for shard in range(4):
        (data / f"shard-{shard:03d}.tar").write_bytes(os.urandom(2**20))
    vision.artifacts.push("imagenet-val", data, kind="dataset")
    until(lambda: admin.deployments.get("doubler").ready_replicas >= 1, timeout=120)
    return {"train": train.id, "waits": waits.id}


def start_gateway(url: str) -> tuple[subprocess.Popen[bytes], str]:
    """The gateway as `kaon up` starts it, and the control plane told where it is (the
    console's "try it" goes through it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "kaon.gateway", "--port", str(port), "--control-plane", url]
    env = {**os.environ, "KAON_GATEWAY_TOKEN": TOKEN}
    proc = subprocess.Popen([*argv, "--poll", "0.25"], env=env, stderr=subprocess.DEVNULL)
    gateway = f"http://127.0.0.1:{port}"
    until(lambda: _answers(f"{gateway}/healthz"))
    return proc, gateway


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def traffic(gateway: str, stop: threading.Event) -> None:
    """A quiet start, a burst that makes the autoscaler add replicas, then quiet again;
    one call in twenty sends a number the handler refuses (a 500)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    with httpx.Client(headers=headers, timeout=30) as http:
        while not stop.is_set():
            t = time.monotonic() - started
            rate = 3.0 if t < 8 else 14.0 if t < 22 else 2.0
            sign = -1 if random.random() < 0.05 else 1
            body = {"x": [sign * random.random()] * 4}
            try:
                http.post(f"{gateway}/doubler/predict", json=body)
            except httpx.HTTPError:
                pass
            stop.wait(random.expovariate(rate))


def http_get(url: str) -> dict[str, list[object]]:
    answer: dict[str, list[object]] = httpx.get(
        url, headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    return answer


def shoot(page: Page, url: str, out: Path, name: str, wait_for: str, full: bool = False) -> None:
    page.goto(url)
    page.wait_for_selector(wait_for)
    time.sleep(2.5)  # a few polls: charts gather points, logs fill
    page.screenshot(path=str(out / f"console-{name}.png"), full_page=full)
    print(f"saved {out / f'console-{name}.png'}")


def main() -> None:
    # Jobs run `python` from this environment (their specs, on screen, read as a user's do).
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.setdefault(INTERVAL_ENV, "2")  # a history point every 2 s, not 15: a short day
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kaon-shots-"))
    settings = Settings(
        home=home,
        database_url=normalize_database_url(str(home / "kaon.db")),
        bootstrap_token=TOKEN,
        node_name="gpu-server-1",
        node_cpus=16.0,
        node_memory=64 * 2**30,
        node_gpus="A100:4",
        labels={"zone": "rack-a"},
        reconcile_interval_s=0.2,
        stop_grace_s=1.0,
    )
    server, url = serve(settings)
    gateway_proc, gateway = start_gateway(url)
    os.environ["KAON_GATEWAY_URL"] = gateway  # read by the control plane at each "try it"
    ids = stage(url, home)
    stop = threading.Event()
    threading.Thread(target=traffic, args=(gateway, stop), daemon=True).start()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        page.goto(f"{url}/console/")
        page.fill("[data-testid=token]", "kaon_…")
        page.screenshot(path=str(args.out / "console-sign-in.png"))
        page.fill("[data-testid=token]", TOKEN)
        page.click("[data-testid=sign-in]")
        page.wait_for_selector("[data-testid=whoami]")
        page.select_option("[data-testid=workspace]", "vision")
        c = f"{url}/console/#"
        shoot(page, f"{c}/nodes", args.out, "nodes", "[data-testid=nodes]")
        shoot(page, f"{c}/jobs", args.out, "jobs", "[data-testid=jobs]")
        shoot(
            page,
            f"{c}/jobs/{ids['train']}?ws=vision",
            args.out,
            "job",
            "[data-metric=loss]",
            full=True,
        )
        shoot(
            page,
            f"{c}/jobs/{ids['waits']}?ws=nlp",
            args.out,
            "job-waiting",
            "[data-testid=waiting-reason]",
        )
        page.select_option("[data-testid=workspace]", "default")
        shoot(page, f"{c}/deployments", args.out, "deployments", "[data-testid=deployments]")
        page.select_option("[data-testid=workspace]", "vision")
        shoot(page, f"{c}/artifacts", args.out, "artifacts", "[data-testid=artifacts]")
        model = f"{c}/models/resnet50?ws=vision"
        shoot(page, model, args.out, "model", "[data-testid=model-versions]")
        shoot(page, f"{c}/secrets", args.out, "secrets", "[data-testid=secrets]")
        shoot(page, f"{c}/audit", args.out, "audit", "[data-testid=audit-record]")
        # The burst scaled it up and the quiet after it down again: both are on the page.
        timeline = f"{url}/api/v1/workspaces/default/deployments/doubler/timeline"
        scaled = lambda: "down" in str(http_get(timeline)["scaling"])  # noqa: E731
        until(scaled, timeout=120)
        page.goto(f"{c}/deployments/doubler?ws=default")
        page.wait_for_selector("[data-testid=scaling-event]")
        page.fill("[data-testid=try-body]", '{"x": [0.5, 1.5, 4]}')
        page.click("[data-testid=try-send]")
        page.wait_for_selector("[data-testid=try-status]")
        time.sleep(2.5)
        page.screenshot(path=str(args.out / "console-deployment.png"), full_page=True)
        print(f"saved {args.out / 'console-deployment.png'}")
        # Last, so the control plane has recorded a few minutes of history by now.
        chart = "[data-testid=history] [data-metric='GPU utilisation (%, measured)']"
        shoot(page, f"{c}/overview", args.out, "overview", chart, full=True)
        shoot(page, f"{c}/quotas", args.out, "quotas", "[data-testid=quota-history]", full=True)
        browser.close()
    stop.set()
    gateway_proc.terminate()
    gateway_proc.wait(timeout=30)
    admin = Client(url, token=TOKEN)
    admin.deployments.delete("doubler")
    for ws in ("vision", "nlp"):
        for job in Client(url, token=TOKEN, workspace=ws).jobs.list():
            if not job.is_done():
                Client(url, token=TOKEN, workspace=ws).jobs.cancel(job.id)
    time.sleep(3)
    server.should_exit = True


if __name__ == "__main__":
    main()
