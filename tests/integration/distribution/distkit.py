"""Helpers for the snapshot-distribution tests: the operator's GrpcSnapshotServer on its own
event loop in a thread, raw protocol clients, `kanal gateway` processes, and HTTP probes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from gwkit import snapshot_from_yaml
from harness.procs import Proc, free_ports
from kanal.controller.distribution import GrpcSnapshotServer
from kanal.snapshot import SNAPSHOT_KEY, SNAPSHOT_SECRET, VERSION_ANNOTATION, Snapshot, to_bytes
from kanal.v1 import snapshot_pb2 as pb
from kanal.v1 import snapshot_pb2_grpc as pb_grpc

ROUTES_YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: mock, namespace: default}}
spec:
  provider: mock
  models: [{{name: mock-small, contextWindow: 8192}}]
"""
ROUTE_YAML = """---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: {name}, namespace: default}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
"""


def snapshot_with_routes(*names: str) -> Snapshot:
    """A snapshot of the mock backend with one route per name (tenant `default`)."""
    text = ROUTES_YAML.format() + "".join(ROUTE_YAML.format(name=n) for n in names)
    return snapshot_from_yaml(text)


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> float:
    """Poll until true; returns the seconds it took. Exceptions count as not yet."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except Exception:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.02)


# -- the operator side ------------------------------------------------------------------------


class ServerThread:
    """A GrpcSnapshotServer on its own event loop; publish() is called from the test thread,
    as kopf's threaded handlers would."""

    def __init__(self, *, token: str = "", port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = GrpcSnapshotServer(token=token)
        self.port: int = self.call(self.server.start("127.0.0.1", port))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def publish(self, snapshot: Snapshot) -> None:
        self.server.publish(snapshot)

    def acks(self) -> dict[str, str]:
        return self.server.acks()

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.call(self.server.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawSubscriber:
    """A protocol-level gateway: sends hello/ack/nack by hand; reading can be paused to
    play a slow gateway (flow control then stalls the server's writes to it)."""

    def __init__(
        self,
        target: str,
        gateway_id: str,
        *,
        version: str = "",
        token: str | None = None,
        first: pb.SubscribeRequest | None = None,
        paused: bool = False,
    ) -> None:
        self.requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        self.updates: queue.Queue[pb.SnapshotUpdate] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.reading = threading.Event()
        if not paused:
            self.reading.set()
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if paused:  # a fixed 64 KiB window: what it does not read stays with the server
            options.append(("grpc.http2.bdp_probe", 0))
        self.channel = grpc.insecure_channel(target, options=options)
        hello = pb.SubscribeRequest(hello=pb.Hello(gateway_id=gateway_id, version=version))
        self.requests.put(first if first is not None else hello)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        stub = pb_grpc.SnapshotServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.call = stub.Subscribe(iter(self.requests.get, None), metadata=metadata)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.reading.wait()
                self.updates.put(next(self.call))
        except StopIteration:
            pass
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.ended.set()

    def next(self, timeout: float = 10.0) -> pb.SnapshotUpdate:
        return self.updates.get(timeout=timeout)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.updates.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def ack(self, version: str) -> None:
        self.requests.put(pb.SubscribeRequest(ack=pb.Ack(version=version)))

    def nack(self, version: str, error: str) -> None:
        self.requests.put(pb.SubscribeRequest(nack=pb.Nack(version=version, error=error)))

    def code(self, timeout: float = 10.0) -> grpc.StatusCode | None:
        """Status the stream ended with (None if it ends OK)."""
        assert self.ended.wait(timeout), "the stream did not end"
        return self.error.code() if self.error is not None else None

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.reading.set()
        self.thread.join(5)
        self.channel.close()

    def __enter__(self) -> RawSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the gateway side -------------------------------------------------------------------------


def http(url: str, body: Any = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class GatewayProcess:
    """`python -m kanal gateway` on free ports, logging to a file."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        operator: str,
        *,
        anonymous: bool = True,
        kube_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.http_port, self.grpc_port = free_ports(2)
        argv = [
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
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--fallback-after",
            "1",
            "--reconnect-max",
            "1",
            *(["--anonymous-tenant", "default"] if anonymous else []),
            *kube_args,
            *extra,
        ]
        environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KANAL_SNAPSHOT_TOKEN", "KANAL_SNAPSHOT_NAMESPACE", "POD_NAME")
        }
        environ.update(env or {})
        self.proc = Proc(f"kanal gateway {name}", argv, run_dir / f"{name}.log", env=environ)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def wait_logged(self, text: str, timeout: float = 15.0) -> None:
        eventually(lambda: text in self.log(), f"{self.name} logs {text!r}", timeout)

    def readyz(self) -> tuple[int, str]:
        status, body = http(f"{self.base_url}/readyz")
        return status, body.decode()

    def version(self) -> str | None:
        """The snapshot version it serves (from /readyz), None while not ready."""
        try:
            status, text = self.readyz()
        except OSError:
            return None
        return text.split()[-1] if status == 200 else None

    def wait_version(self, version: str, timeout: float = 15.0) -> float:
        return self.wait_for(lambda: self.version() == version, f"serves {version}", timeout)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> float:
        """Poll ``check``; fails with the log's tail, or at once if the process died."""

        def alive_check() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"{self.name} died:\n{self.proc.tail()}")
            return check()

        try:
            return eventually(alive_check, f"{self.name} {what}", timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- {self.name} log:\n{self.proc.tail(60)}") from None

    def models(self) -> list[str]:
        status, body = http(f"{self.base_url}/v1/models")
        assert status == 200, body
        return sorted(m["id"] for m in json.loads(body)["data"])

    def chat(self, model: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        status, body = http(
            f"{self.base_url}/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "hi"}]},
            token,
        )
        return status, json.loads(body)

    def stop(self, timeout: float = 10.0) -> int | None:
        self.proc.stop(timeout)
        return self.proc.popen.returncode

    def rss_kib(self) -> int:
        return vm_rss_kib(self.proc.pid)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- the persisted Secret ---------------------------------------------------------------------


def persisted_secret(snapshot: Snapshot, name: str = SNAPSHOT_SECRET) -> dict[str, Any]:
    """The Secret the operator persists: data[snapshot.json] = base64(to_bytes), annotated."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {VERSION_ANNOTATION: snapshot.version}},
        "type": "Opaque",
        "data": {SNAPSHOT_KEY: base64.b64encode(to_bytes(snapshot)).decode()},
    }


@contextlib.contextmanager
def gateways(*procs: GatewayProcess) -> Iterator[tuple[GatewayProcess, ...]]:
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()
