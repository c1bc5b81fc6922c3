"""The operator end to end: apply -> snapshot out, at scale, on the real test bench.

Starts the test bench's control plane (kube-apiserver + etcd + kube-controller-manager, as
`make test` builds them), the CRDs, and `kanal operator` as its own process with the gRPC
snapshot server on; a subscriber on 127.0.0.1 plays the gateway's side of the stream.

  edits   N edits one after another (a route's public model renamed with a PATCH through
          the API); per edit, the time from the PATCH until the subscriber receives the
          snapshot that has it (p50/p99), and until the Secret kanal-snapshot holds it.
  sizes   for each size: that many LlmRoutes (plus a mock ModelBackend per 50 routes) created
          through the API as fast as it takes them; time until the streamed snapshot has
          them all, until every route reports Ready, the compile time of that snapshot
          in-process, and the operator's VmRSS afterwards.

    .venv/bin/python bench/operator_e2e.py [--edits 100] [--sizes 500,2000] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from harness import ControlPlane, find_k8s_bin, find_kubectl  # noqa: E402
from harness.procs import free_ports  # noqa: E402
from kanal.api import LlmRoute, ModelBackend  # noqa: E402
from kanal.snapshot import Snapshot, compile_snapshot, from_bytes  # noqa: E402
from kanal.v1 import snapshot_pb2 as pb  # noqa: E402
from kanal.v1 import snapshot_pb2_grpc as pb_grpc  # noqa: E402

GROUP, VERSION = "kanal.dev", "v1alpha1"


def backend(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {"provider": "mock", "models": [{"name": "m", "contextWindow": 8192}]},
    }


def route(name: str, backend_name: str, model: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LlmRoute",
        "metadata": {"name": name},
        "spec": {
            "model": model or name,
            "backends": [{"backendRef": {"name": backend_name}, "model": "m"}],
            "retry": {"attempts": 2},
            "rateLimit": {"requestsPerMinute": 600},
            "context": {"enabled": True, "maxTokens": 2000},
        },
    }


class Subscriber:
    """The gateway's side of the snapshot stream; decoded snapshots land in ``self.got``."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.got: queue.Queue[tuple[float, Snapshot]] = queue.Queue()
        self.outbox: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        self.outbox.put(pb.SubscribeRequest(hello=pb.Hello(gateway_id="bench")))
        stub = pb_grpc.SnapshotServiceStub(self.channel)
        self.stream = stub.Subscribe(self._requests(), wait_for_ready=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[pb.SubscribeRequest]:
        while (item := self.outbox.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for update in self.stream:
                at = time.perf_counter()
                raw = update.payload
                if raw[:2] == b"\x1f\x8b":
                    raw = gzip.decompress(raw)
                self.got.put((at, from_bytes(raw)))
                self.outbox.put(pb.SubscribeRequest(ack=pb.Ack(version=update.version)))
        except grpc.RpcError:
            pass

    def wait(self, predicate: Any, timeout: float = 120.0) -> tuple[float, Snapshot]:
        deadline = time.monotonic() + timeout
        while True:
            at, snapshot = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            if predicate(snapshot):
                return at, snapshot

    def close(self) -> None:
        self.outbox.put(None)
        self.stream.cancel()
        self.channel.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cp: ControlPlane, namespace: str, log: Path) -> None:
        self.cp = cp
        self.ns = namespace
        self.api = k8s_config.new_client_from_config(config_file=str(cp.kubeconfig))
        self.custom = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        (self.port,) = free_ports(1)
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "kanal", "operator", "-n", namespace,
                "--snapshot-namespace", namespace, "--standalone",
                "--snapshot-port", str(self.port), "--snapshot-host", "127.0.0.1",
            ],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "Activity 'start-sync' succeeded" not in log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"operator did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def create(self, obj: dict[str, Any]) -> None:
        plural = "modelbackends" if obj["kind"] == "ModelBackend" else "llmroutes"
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, obj)

    def persisted_version(self) -> str:
        secret = self.core.read_namespaced_secret("kanal-snapshot", self.ns)
        return str((secret.metadata.annotations or {}).get("kanal.dev/snapshot-version"))

    def all_ready(self, count: int) -> bool:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, "llmroutes")
        ready = sum(
            1
            for item in items["items"]
            for c in (item.get("status") or {}).get("conditions") or []
            if c["type"] == "Ready" and c["status"] == "True"
        )
        return ready >= count

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.api.close()


def run_edits(cp: ControlPlane, count: int, tmp: Path) -> dict[str, Any]:
    bench = Bench(cp, "bench-edits", tmp / "edits.log")
    try:
        sub = Subscriber(bench.port)
        bench.create(backend("mock"))
        bench.create(route("r", "mock"))
        sub.wait(lambda s: "bench-edits/r" in s.routes, timeout=60)
        streamed: list[float] = []
        persisted: list[float] = []
        for i in range(count):
            model = f"model-{i}"
            t0 = time.perf_counter()
            bench.custom.patch_namespaced_custom_object(
                GROUP, VERSION, bench.ns, "llmroutes", "r", {"spec": {"model": model}}
            )
            at, snapshot = sub.wait(lambda s, m=model: s.routes["bench-edits/r"].model == m)
            streamed.append(at - t0)
            while bench.persisted_version() != snapshot.version:
                time.sleep(0.002)
            persisted.append(time.perf_counter() - t0)
        sub.close()
    finally:
        bench.stop()
    ms = [v * 1000 for v in streamed]
    ms_p = [v * 1000 for v in persisted]
    return {
        "edits": count,
        "streamed_ms": {"p50": round(pct(ms, 0.5), 1), "p99": round(pct(ms, 0.99), 1),
                        "mean": round(statistics.fmean(ms), 1)},
        "persisted_ms": {"p50": round(pct(ms_p, 0.5), 1), "p99": round(pct(ms_p, 0.99), 1)},
    }  # fmt: skip


def run_size(cp: ControlPlane, size: int, tmp: Path) -> dict[str, Any]:
    ns = f"bench-{size}"
    bench = Bench(cp, ns, tmp / f"size-{size}.log")
    try:
        sub = Subscriber(bench.port)
        backends = [backend(f"mock-{i}") for i in range((size + 49) // 50)]
        routes = [route(f"route-{i:05d}", f"mock-{i // 50}") for i in range(size)]
        t0 = time.perf_counter()
        for obj in backends + routes:
            bench.create(obj)
        created = time.perf_counter() - t0
        at, snapshot = sub.wait(lambda s: len(s.routes) == size, timeout=600)
        streamed = at - t0
        deadline = time.monotonic() + 600
        while not bench.all_ready(size):
            if time.monotonic() > deadline:
                raise RuntimeError("routes not Ready")
            time.sleep(0.2)
        ready = time.perf_counter() - t0
        time.sleep(2.0)
        rss = rss_kib(bench.proc.pid)
        sub.close()
    finally:
        bench.stop()
    models_b = [
        ModelBackend.model_validate({**b, "metadata": {**b["metadata"], "namespace": ns}})
        for b in backends
    ]
    models_r = [
        LlmRoute.model_validate({**r, "metadata": {**r["metadata"], "namespace": ns}})
        for r in routes
    ]
    compile_snapshot(models_b[:1], models_r[:1])  # warm (first use of each model class)
    t1 = time.perf_counter()
    compiled = compile_snapshot(models_b, models_r)
    compile_s = time.perf_counter() - t1
    assert compiled.version == snapshot.version
    return {
        "routes": size,
        "create_seconds": round(created, 2),
        "apply_to_streamed_seconds": round(streamed, 2),
        "last_create_to_streamed_seconds": round(streamed - created, 2),
        "apply_to_all_ready_seconds": round(ready, 2),
        "last_create_to_all_ready_seconds": round(ready - created, 2),
        "compile_ms": round(compile_s * 1000, 1),
        "operator_rss_mib": round(rss / 1024, 1),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(find_k8s_bin(), find_kubectl()) as cp:
        cp.apply_crds(sorted((REPO / "crds").glob("*.yaml")), restart_controllers=False)
        if args.edits:
            results["edits"] = run_edits(cp, args.edits, Path(tmp))
        results["sizes"] = [
            run_size(cp, int(s), Path(tmp)) for s in args.sizes.split(",") if s.strip()
        ]
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
