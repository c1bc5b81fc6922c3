"""Gateway overhead: kanal against a bare aiohttp passthrough, in one script.

Three setups answer the same chat request from the same fixed upstream on 127.0.0.1:
  direct  the client calls the upstream itself (no hop),
  bare    a minimal aiohttp passthrough (read body, forward, return),
  kanal   `kanal up` with an openai-compatible backend pointing at the upstream.
The upstream, the proxy and the client each run in their own process. Figures are
ratios and differences between setups measured in this same run, never absolutes.

    .venv/bin/python bench/overhead.py [--requests 3000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

UPSTREAM = textwrap.dedent(
    """
    import sys, uvloop
    from aiohttp import web
    BODY = (b'{"id":"x","object":"chat.completion","created":0,"model":"m","choices":'
            b'[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}')
    async def chat(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

BARE_PROXY = textwrap.dedent(
    """
    import sys, aiohttp, uvloop
    from aiohttp import web
    UP = f"http://127.0.0.1:{sys.argv[2]}/v1/chat/completions"
    async def start(app):
        app["s"] = aiohttp.ClientSession()
    async def stop(app):
        await app["s"].close()
    async def chat(request):
        body = await request.read()
        async with request.app["s"].post(UP, data=body,
                                         headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status,
                                content_type="application/json")
    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

MANIFEST = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: upstream}}
spec:
  provider: openai-compatible
  endpoint: http://127.0.0.1:{port}/v1
  models: [{{name: m, contextWindow: 8192}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends: [{{backendRef: {{name: upstream}}, model: m}}]
"""

REQUEST = b'{"model":"chat","messages":[{"role":"user","content":"hello"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


async def load(url: str, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with session.post(
                    url, data=REQUEST, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def warmup(requests: int) -> int:
    """How many requests ``measure`` sends first, not measured."""
    return min(300, requests)


def start_kanal(folder: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``kanal up`` serving the manifests in ``folder`` on ``port`` (gRPC on a free port)."""
    command = [sys.executable, "-m", "kanal", "up", "-f", str(folder), "--port", str(port)]
    command += ["--grpc-port", str(free_port())]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(name: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    await load(url, warmup(args.requests), args.concurrency)
    started = time.perf_counter()
    latencies = await load(url, args.requests, args.concurrency)
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }
    print(
        f"{name:7s} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:6.2f} ms"
        f"   p99 {result['p99_ms']:6.2f} ms"
    )
    return result


async def main(args: argparse.Namespace) -> None:
    up_port, bare_port, kanal_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    folder = Path(tempfile.mkdtemp(prefix="kanal-bench-"))
    (folder / "bench.yaml").write_text(MANIFEST.format(port=up_port))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)], env=env))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BARE_PROXY, str(bare_port), str(up_port)], env=env
            )
        )
        procs.append(start_kanal(folder, kanal_port, env))
        for port in (up_port, bare_port, kanal_port):
            await wait_listening(port)
        path = "/v1/chat/completions"
        print(f"{args.requests} requests, concurrency {args.concurrency}, {os.cpu_count()} cores")
        ratios, bare_added, kanal_added = [], [], []
        for round_ in range(1, args.rounds + 1):  # interleaved, so drift hits all setups alike
            print(f"round {round_}")
            direct = await measure("direct", f"http://127.0.0.1:{up_port}{path}", args)
            bare = await measure("bare", f"http://127.0.0.1:{bare_port}{path}", args)
            kanal = await measure("kanal", f"http://127.0.0.1:{kanal_port}{path}", args)
            ratios.append(kanal["rps"] / bare["rps"])
            bare_added.append(bare["p50_ms"] - direct["p50_ms"])
            kanal_added.append(kanal["p50_ms"] - direct["p50_ms"])
        print(
            f"median of {args.rounds} rounds: kanal/bare throughput "
            f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
            f"added p50 per hop: bare {statistics.median(bare_added):+.2f} ms, "
            f"kanal {statistics.median(kanal_added):+.2f} ms"
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
