"""Routing-snapshot distribution: publish -> served latency, and large snapshots end to end.

Runs the operator's GrpcSnapshotServer (in this process, on its own event loop) and real
`kanal gateway` processes on 127.0.0.1, no cluster needed:

  edits   publish N edits one after another (each adds a route to a small snapshot, or to
          one of --edit-base-routes routes); per edit, the time from publish() until the
          gateway ACKs it and until GET /v1/models on the gateway lists the new route.
  sizes   for each size: generated ModelBackends/LlmRoutes/Secrets (3 backends and a key per
          namespace of 50 routes; every route with two tiers, retry, limits, cache, context,
          guardrails) -> compile_snapshot -> to_bytes -> published to the warm gateway (time
          to its ACK); then a separate server process holding only that snapshot and a cold
          gateway process started against it (time from spawn to /readyz, and VmRSS of both).

    .venv/bin/python bench/snapshot.py [--edits 100] [--sizes 500,2000] [--edit-base-routes 0]
                                       [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from kanal.api import LlmRoute, ModelBackend, Secret  # noqa: E402
from kanal.controller.distribution import GrpcSnapshotServer  # noqa: E402
from kanal.snapshot import Snapshot, compile_snapshot, from_bytes, to_bytes  # noqa: E402

ROUTES_PER_NAMESPACE = 50
SECRET_LIMIT = 1024 * 1024  # a Secret's data may hold at most 1 MiB

SERVER_CHILD = """
import asyncio, logging, pathlib, sys
from kanal.controller.distribution import GrpcSnapshotServer
from kanal.snapshot import from_bytes

async def main():
    logging.getLogger("kanal.controller").setLevel(logging.ERROR)  # no token: on purpose
    server = GrpcSnapshotServer(token="")
    server.publish(from_bytes(pathlib.Path(sys.argv[1]).read_bytes()))
    print(await server.start("127.0.0.1", 0), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await server.stop()

asyncio.run(main())
"""


# -- generated objects ----------------------------------------------------------------------


def objects(routes: int, extra_route: str | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """ModelBackends, LlmRoutes and Secrets for ``routes`` routes (plus one named
    ``extra_route`` in namespace default, for edits)."""
    backends: list[ModelBackend] = []
    llm_routes: list[LlmRoute] = []
    secrets: list[Secret] = []

    def backend(ns: str, name: str, spec: dict[str, Any]) -> None:
        backends.append(
            ModelBackend.model_validate(
                {
                    "apiVersion": "kanal.dev/v1alpha1",
                    "kind": "ModelBackend",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": spec,
                }
            )
        )

    def route(ns: str, name: str, spec: dict[str, Any]) -> None:
        llm_routes.append(
            LlmRoute.model_validate(
                {
                    "apiVersion": "kanal.dev/v1alpha1",
                    "kind": "LlmRoute",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": spec,
                }
            )
        )

    mock = {"provider": "mock", "models": [{"name": "mock-small", "contextWindow": 8192}]}
    backend("default", "mock", mock)
    route(
        "default", "chat", {"backends": [{"backendRef": {"name": "mock"}, "model": "mock-small"}]}
    )
    if extra_route:
        route(
            "default",
            extra_route,
            {"backends": [{"backendRef": {"name": "mock"}, "model": "mock-small"}]},
        )
    for i in range(routes):
        ns = f"team-{i // ROUTES_PER_NAMESPACE}"
        if i % ROUTES_PER_NAMESPACE == 0:
            secrets.append(
                Secret.model_validate(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "openai-key", "namespace": ns},
                        "stringData": {"apiKey": f"sk-bench-{ns}-{'x' * 40}"},
                    }
                )
            )
            backend(
                ns,
                "openai",
                {
                    "provider": "openai",
                    "endpoint": "https://api.openai.com/v1",
                    "credentials": {"secretRef": {"name": "openai-key", "key": "apiKey"}},
                    "models": [
                        {
                            "name": "gpt-4o-mini",
                            "contextWindow": 128000,
                            "pricing": {"inputPerMTok": 0.15, "outputPerMTok": 0.6},
                        },
                        {"name": "gpt-4o", "contextWindow": 128000},
                    ],
                    "limits": {"rpm": 600, "tpm": 200000, "maxConcurrency": 64},
                },
            )
            backend(
                ns,
                "local",
                {
                    "provider": "openai-compatible",
                    "endpoint": f"http://llama.{ns}.svc.cluster.local/v1",
                    "models": [{"name": "llama3", "contextWindow": 8192}],
                },
            )
            backend(ns, "mock", mock)
        route(
            ns,
            f"route-{i}",
            {
                "model": f"model-{i}",
                "backends": [
                    {"backendRef": {"name": "openai"}, "model": "gpt-4o-mini", "weight": 90},
                    {"backendRef": {"name": "local"}, "model": "llama3", "weight": 10},
                    {"backendRef": {"name": "mock"}, "model": "mock-small", "priority": 1},
                ],
                "retry": {"attempts": 2, "backoff": "200ms"},
                "timeout": "60s",
                "rateLimit": {"requestsPerMinute": 600, "tokensPerMinute": 200000, "per": "key"},
                "cache": {"enabled": True, "ttl": "10m"},
                "context": {"enabled": True, "maxTokens": 4000, "ttl": "24h"},
                "guardrails": {"redact": ["email", "credit-card"], "maxInputTokens": 8000},
                "access": {"namespaces": ["default"] if i % 10 == 0 else []},
            },
        )
    return backends, llm_routes, secrets


def compiled(routes: int, extra_route: str | None = None) -> Snapshot:
    snapshot = compile_snapshot(*objects(routes, extra_route))
    assert not snapshot.problems, snapshot.problems[:3]
    return snapshot


# -- processes and probes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Gateway:
    def __init__(self, name: str, operator: str, log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k != "KANAL_SNAPSHOT_TOKEN"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kanal",
                    "gateway",
                    "--operator",
                    operator,
                    "--gateway-id",
                    name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--grpc-port",
                    str(free_port()),
                    "--anonymous-tenant",
                    "default",
                    "--fallback-after",
                    "600",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def version(self) -> str | None:
        try:
            status, body = self.get("/readyz")
        except OSError:
            return None
        return body.decode().split()[-1] if status == 200 else None

    def models(self) -> set[str]:
        status, body = self.get("/v1/models")
        return {m["id"] for m in json.loads(body)["data"]} if status == 200 else set()

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 120.0) -> float:
        start = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway died; log:\n{self.log.read_text()[-3000:]}")
            try:
                if check():
                    return time.perf_counter() - start
            except OSError:
                pass
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"gateway not {what} after {timeout}s")
            time.sleep(0.0005)

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Server:
    """GrpcSnapshotServer on its own event loop in a thread (publish from this thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = GrpcSnapshotServer(token="")
        future = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop)
        self.target = f"127.0.0.1:{future.result(10)}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def child_server(snapshot_file: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CHILD, str(snapshot_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        yield proc, f"127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- the measurements -----------------------------------------------------------------------


def measure_edits(server: Server, gateway: Gateway, edits: int, base_routes: int) -> dict[str, Any]:
    acked: list[float] = []
    served: list[float] = []
    for i in range(edits):
        want = f"edit-{i}"
        snapshot = compiled(base_routes, want)  # compiling and hashing are not distribution
        _ = snapshot.version
        start = time.perf_counter()
        server.server.publish(snapshot)
        t_ack = t_http = None
        while t_ack is None or t_http is None:
            now = time.perf_counter()
            if t_ack is None and server.server.acks().get("bench-warm") == snapshot.version:
                t_ack = now - start
            if t_http is None and want in gateway.models():
                t_http = time.perf_counter() - start
            if now - start > 30:
                raise RuntimeError(f"edit {i} not served within 30 s")
            time.sleep(0.0005)
        acked.append(t_ack)
        served.append(t_http)
    return {
        "edits": edits,
        "base_routes": base_routes,
        "ack_ms": {
            "p50": ms(statistics.median(acked)),
            "p99": ms(percentile(acked, 99)),
            "max": ms(max(acked)),
        },
        "served_ms": {
            "p50": ms(statistics.median(served)),
            "p99": ms(percentile(served, 99)),
            "max": ms(max(served)),
        },
    }


def measure_size(server: Server, warm: Gateway, routes: int, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    generated = objects(routes)
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    snapshot = compile_snapshot(*generated)
    version = snapshot.version
    compile_s = time.perf_counter() - started
    assert not snapshot.problems and len(snapshot.routes) == routes + 1
    started = time.perf_counter()
    payload = to_bytes(snapshot)
    to_bytes_s = time.perf_counter() - started
    started = time.perf_counter()
    from_bytes(payload)
    from_bytes_s = time.perf_counter() - started

    started = time.perf_counter()
    server.server.publish(snapshot)
    warm.wait(lambda: server.server.acks().get("bench-warm") == version, "acked", 120)
    publish_to_ack_s = time.perf_counter() - started

    file = work / f"snapshot-{routes}.bin"
    file.write_bytes(payload)
    with child_server(file) as (child, target):
        started = time.perf_counter()
        cold = Gateway(f"bench-cold-{routes}", target, work)
        try:
            cold_ready_s = cold.wait(lambda: cold.version() == version, "ready", 120)
            time.sleep(0.5)  # let both settle (encoding buffers, retired pools)
            rss = {"gateway_mib": round(vm_rss_mib(cold.proc.pid), 1)}
            rss["server_mib"] = round(vm_rss_mib(child.pid), 1)
        finally:
            cold.stop()
    return {
        "routes": routes,
        "backends": len(snapshot.backends),
        "generate_objects_s": round(generate_s, 3),
        "compile_s": round(compile_s, 3),
        "to_bytes_s": round(to_bytes_s, 3),
        "from_bytes_s": round(from_bytes_s, 3),
        "bytes": len(payload),
        "gzip_bytes": len(zlib.compress(payload, 6)),
        "fits_secret": len(payload) <= SECRET_LIMIT,
        "publish_to_warm_ack_s": round(publish_to_ack_s, 3),
        "compile_serialize_serve_s": round(compile_s + to_bytes_s + publish_to_ack_s, 3),
        "cold_gateway_spawn_to_ready_s": round(cold_ready_s, 3),
        "rss_with_snapshot": rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--edit-base-routes", type=int, default=0)
    parser.add_argument("--sizes", default="500,2000", help="comma-separated route counts")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    logging.getLogger("kanal.controller").setLevel(logging.ERROR)  # no token: on purpose

    result: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="kanal-bench-") as tmp:
        work = Path(tmp)
        server = Server()
        base = compiled(args.edit_base_routes)
        server.server.publish(base)
        warm = Gateway("bench-warm", server.target, work)
        try:
            warm.wait(lambda: warm.version() == base.version, "ready", 60)
            baseline_rss = vm_rss_mib(warm.proc.pid)
            if args.edits:
                result["edits"] = measure_edits(server, warm, args.edits, args.edit_base_routes)
            result["sizes"] = [measure_size(server, warm, n, work) for n in sizes]
            result["warm_gateway_rss_mib"] = {
                "before": round(baseline_rss, 1),
                "after_largest": round(vm_rss_mib(warm.proc.pid), 1),
            }
        except BaseException:
            print(warm.log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            warm.stop()
            server.stop()

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"python {result['python']}, {result['cpus']} CPUs")
    if "edits" in result:
        e = result["edits"]
        print(
            f"publish -> served over {e['edits']} edits (base {e['base_routes']} routes): "
            f"ACK p50 {e['ack_ms']['p50']} ms, p99 {e['ack_ms']['p99']} ms; "
            f"GET /v1/models p50 {e['served_ms']['p50']} ms, p99 {e['served_ms']['p99']} ms"
        )
    for s in result["sizes"]:
        print(
            f"{s['routes']} routes ({s['backends']} backends): compile {s['compile_s']} s, "
            f"to_bytes {s['to_bytes_s']} s ({s['bytes'] / 1024:.0f} KiB, gzip "
            f"{s['gzip_bytes'] / 1024:.0f} KiB, fits a Secret: {s['fits_secret']}), "
            f"from_bytes {s['from_bytes_s']} s, "
            f"publish -> warm ACK {s['publish_to_warm_ack_s']} s, "
            f"cold gateway spawn -> ready {s['cold_gateway_spawn_to_ready_s']} s, RSS gateway "
            f"{s['rss_with_snapshot']['gateway_mib']} MiB / server "
            f"{s['rss_with_snapshot']['server_mib']} MiB"
        )
    w = result["warm_gateway_rss_mib"]
    print(f"warm gateway RSS {w['before']} MiB -> {w['after_largest']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
