"""A bounded load run of ``mobilevlm serve`` on loopback, through the openai client.

Starts the server as its own process (the built-in model, or ``--bundle``, under
``--memory-budget``), sends ``--requests`` chat completions from
``--concurrency`` client threads (each a held-out Shapes-VQA scene and its
question, as a data: URL, greedy), and reports latency percentiles, errors,
accuracy and the server's peak RSS (VmHWM) against the budget.

    python -m mobilevlm.bench.serve_load [--requests 300] [--concurrency 8]
        [--memory-budget 600MB] [--report docs/serve-load.json]

A command, not a test.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mobilevlm import shapes_vqa
from mobilevlm.bench.harness import machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not come up:\n{proc.stderr.read()}") from None
            time.sleep(0.2)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilevlm.bench.serve_load")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--memory-budget", default="600MB")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)

    import openai

    from mobilevlm.runtime.memory import parse_size

    port = _free_port()
    command = [sys.executable, "-m", "mobilevlm.cli", "serve", "--port", str(port)]
    command += ["--memory-budget", args.memory_budget, "--max-queue", str(args.concurrency)]
    command += [str(args.bundle)] if args.bundle else []
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        health = _wait_for(f"http://127.0.0.1:{port}/health", proc)
        scenes = [shapes_vqa.sample("heldout", i) for i in range(args.requests)]
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=300
        )
        lock, errors, latencies, correct = threading.Lock(), [], [], []

        def one(scene) -> None:
            buffer = io.BytesIO()
            scene.image().save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content = [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": scene.question.question},
            ]
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model="default",
                    messages=[{"role": "user", "content": content}],
                    temperature=0,
                    max_tokens=args.max_tokens,
                )
            except openai.OpenAIError as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            seconds = time.perf_counter() - start
            q = scene.question
            ok = shapes_vqa.is_correct(reply.choices[0].message.content, q.answer, q.kind)
            with lock:
                latencies.append(seconds * 1000)
                correct.append(ok)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, scenes))
        wall = time.perf_counter() - started
        peak = _peak_rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    budget = parse_size(args.memory_budget)
    report = {
        "machine": machine(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "errors": len(errors),
        "error_samples": errors[:3],
        "accuracy": sum(correct) / len(correct) if correct else None,
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.5), 1) if latencies else None,
            "p95": round(_percentile(latencies, 0.95), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
            "mean": round(statistics.mean(latencies), 1) if latencies else None,
        },
        "throughput_rps": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "budget_mib": round(budget / 2**20, 1),
        "under_budget": peak <= budget,
        "plan": health.get("memory_plan"),
        "runtime": health.get("runtime"),
        "server_exit": proc.returncode,
    }
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print(text)
    return 0 if not errors and report["under_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
