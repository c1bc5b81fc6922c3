"""Helpers for data-plane tests: snapshots from YAML text, and a gateway running on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kanal import manifests
from kanal.gateway.server import RunningGateway, running_gateway
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import Snapshot, compile_snapshot

MOCK_YAML = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
"""

TEST_SETTINGS = GatewaySettings(port=0, grpc_port=0, anonymous_tenant="default")


def snapshot_from_yaml(text: str, tmp_dir: Path | None = None) -> Snapshot:
    """Compile manifests given as YAML text; fails loudly on any manifest or compile problem."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_dir) as folder:
        path = Path(folder) / "objects.yaml"
        path.write_text(text)
        loaded = manifests.load([path])
    assert not loaded.errors, [str(e) for e in loaded.errors]
    snapshot = compile_snapshot(loaded.backends, loaded.routes, loaded.secrets)
    assert not snapshot.problems, snapshot.problems
    return snapshot


@contextlib.asynccontextmanager
async def gateway_with(
    snapshot: Snapshot, settings: GatewaySettings = TEST_SETTINGS
) -> AsyncIterator[RunningGateway]:
    """A gateway (HTTP and gRPC on free ports) serving ``snapshot``, inside the running loop."""
    async with running_gateway(settings) as running:
        await running.gateway.runtime.apply(snapshot)
        yield running


@dataclass
class ThreadedGateway:
    """A gateway on its own event loop in a thread, for blocking clients (the openai SDK)."""

    running: RunningGateway
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}/v1"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.running.grpc_port}"

    def apply(self, snapshot: Snapshot) -> None:
        asyncio.run_coroutine_threadsafe(
            self.running.gateway.runtime.apply(snapshot), self.loop
        ).result(10)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@contextlib.contextmanager
def threaded_gateway(
    snapshot: Snapshot, settings: GatewaySettings = TEST_SETTINGS, **overrides: Any
) -> Iterator[ThreadedGateway]:
    settings = replace(settings, **overrides)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with gateway_with(snapshot, settings) as running:
                holder["running"] = running
                started.set()
                await stop.wait()
        except BaseException as exc:  # surface start-up failures to the test thread
            holder["error"] = exc
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(30)
    if "error" in holder:
        raise holder["error"]
    try:
        yield ThreadedGateway(holder["running"], loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
