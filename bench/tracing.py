"""What tracing costs: the same gateway with tracing off, sampled out, and on, in one run.

Three `kanal up` processes answer the same chat request from the same fixed upstream on
127.0.0.1 (the upstream of bench/overhead.py):
  off      OTEL_TRACES_EXPORTER=none (the default): no tracer at all,
  sampled  OTEL_TRACES_EXPORTER=otlp with OTEL_TRACES_SAMPLER=always_off: the span calls
           are made, nothing is recorded or exported,
  on       OTEL_TRACES_EXPORTER=otlp, every request traced (request, routing and attempt
           spans) and exported by the batch processor (OTLP/HTTP protobuf) to a local
           collector stand-in that accepts and drops them.
Rounds are interleaved so drift hits all three alike; figures are ratios to `off` and
differences in p50 measured in this same run, never absolutes.

    .venv/bin/python bench/tracing.py [--requests 3000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from overhead import MANIFEST, UPSTREAM, free_port, measure, start_kanal, wait_listening, warmup

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc): a cost figure that other load on the
    machine does not distort the way throughput is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


COLLECTOR = """
import sys, uvloop
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def setups(collector: int) -> dict[str, dict[str, str]]:
    otlp = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
    }
    return {
        "off": {"OTEL_TRACES_EXPORTER": "none"},
        "sampled": {**otlp, "OTEL_TRACES_SAMPLER": "always_off"},
        "on": {**otlp, "OTEL_TRACES_SAMPLER": "always_on"},
    }


async def main(args: argparse.Namespace) -> None:
    up_port, collector = free_port(), free_port()
    configs = setups(collector)
    ports = {name: free_port() for name in configs}
    folder = Path(tempfile.mkdtemp(prefix="kanal-bench-tracing-"))
    (folder / "bench.yaml").write_text(MANIFEST.format(port=up_port))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)]))
        procs.append(subprocess.Popen([sys.executable, "-c", COLLECTOR, str(collector)]))
        kanal = {}
        for name, extra in configs.items():
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
            kanal[name] = start_kanal(folder, ports[name], env)
            procs.append(kanal[name])
        for port in (up_port, collector, *ports.values()):
            await wait_listening(port)
        print(f"{args.requests} requests, concurrency {args.concurrency}, {os.cpu_count()} cores")
        ratios: dict[str, list[float]] = {name: [] for name in configs if name != "off"}
        added: dict[str, list[float]] = {name: [] for name in ratios}
        cpu: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}")
            results = {}
            for name, port in ports.items():
                before = cpu_seconds(kanal[name].pid)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                results[name] = await measure(name, url, args)
                sent = args.requests + warmup(args.requests)  # per request, warm-up included
                cpu[name].append((cpu_seconds(kanal[name].pid) - before) / sent * 1e6)
            for name in ratios:
                ratios[name].append(results[name]["rps"] / results["off"]["rps"])
                added[name].append(results[name]["p50_ms"] - results["off"]["p50_ms"])
        for name in ratios:
            r = ratios[name]
            print(
                f"median of {args.rounds} rounds: {name}/off throughput "
                f"{statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f}); "
                f"p50 {statistics.median(added[name]):+.2f} ms; gateway CPU per request "
                f"{statistics.median(cpu[name]) / statistics.median(cpu['off']):.2f}x off"
            )
        for name in configs:
            print(f"gateway CPU per request, {name}: {statistics.median(cpu[name]):.0f} us")
    finally:
        for proc in reversed(procs):  # the gateways first: their last export still lands
            proc.terminate()
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
