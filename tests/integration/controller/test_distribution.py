"""`kanal operator --snapshot-port`: the compiled snapshots reach a subscriber over gRPC, its
ACK shows on the snapshot Secret, and only the active replica serves."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from opkit import Operators, snapshot_secret, wait_for

from harness import Kube
from harness.procs import free_ports
from kanal.snapshot import from_bytes
from kanal.v1 import snapshot_pb2 as pb
from kanal.v1 import snapshot_pb2_grpc as pb_grpc

MOCK = {
    "apiVersion": "kanal.dev/v1alpha1",
    "kind": "ModelBackend",
    "metadata": {"name": "mock"},
    "spec": {"provider": "mock", "models": [{"name": "m", "contextWindow": 1000}]},
}


def route(name: str, model: str) -> dict[str, Any]:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "LlmRoute",
        "metadata": {"name": name},
        "spec": {"model": model, "backends": [{"backendRef": {"name": "mock"}, "model": "m"}]},
    }


class Subscriber:
    """A minimal gateway side of kanal.v1.SnapshotService/Subscribe."""

    def __init__(self, port: int, gateway_id: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.outbox: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        self.outbox.put(pb.SubscribeRequest(hello=pb.Hello(gateway_id=gateway_id)))
        stub = pb_grpc.SnapshotServiceStub(self.channel)
        self.updates = stub.Subscribe(self._requests(), timeout=60)

    def _requests(self) -> Iterator[pb.SubscribeRequest]:
        while (item := self.outbox.get()) is not None:
            yield item

    def next_update(self, timeout: float = 20.0) -> pb.SnapshotUpdate:
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(next(self.updates)), daemon=True)
        thread.start()
        thread.join(timeout)
        assert result, f"no SnapshotUpdate within {timeout}s"
        update: pb.SnapshotUpdate = result[0]
        return update

    def ack(self, version: str) -> None:
        self.outbox.put(pb.SubscribeRequest(ack=pb.Ack(version=version)))

    def close(self) -> None:
        self.outbox.put(None)
        self.updates.cancel()
        self.channel.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_snapshots_stream_to_a_subscriber_and_acks_show(kube: Kube, operators: Operators) -> None:
    (port,) = free_ports(1)
    operators.start("--snapshot-port", str(port), "--snapshot-host", "127.0.0.1")
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([MOCK, route("r", "one")]))
    version, _ = wait_for(
        "persisted snapshot with r",
        lambda: (s := snapshot_secret(kube)) and len(s[1].routes) == 1 and s,
    )
    subscriber = Subscriber(port, "gw-test")
    try:
        update = subscriber.next_update()
        assert update.version == version
        assert from_bytes(update.payload).version == version
        subscriber.ack(update.version)
        wait_for(
            "the ACK on the snapshot Secret",
            lambda: (
                json.loads(
                    (
                        kube.core.read_namespaced_secret(
                            "kanal-snapshot", kube.namespace
                        ).metadata.annotations
                        or {}
                    ).get("kanal.dev/gateway-acks", "{}")
                ).get("gw-test")
                == version
            ),
        )
        # an edit reaches the running subscriber
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(route("r", "two")))
        edited = subscriber.next_update()
        assert edited.version != version
        assert from_bytes(edited.payload).routes[f"{kube.namespace}/r"].model == "two"
    finally:
        subscriber.close()


@pytest.mark.usefixtures("peering_crd_installed")
def test_only_the_active_replica_serves_snapshots(kube: Kube, operators: Operators) -> None:
    leader_port, standby_port = free_ports(2)
    common = ("--peering", "--peering-lifetime", "15", "--snapshot-host", "127.0.0.1")
    leader = operators.start(*common, "--snapshot-port", str(leader_port), name="leader")
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(MOCK))
    wait_for("leader serves", lambda: listening(leader_port))
    standby = operators.start(*common, "--snapshot-port", str(standby_port), name="standby")
    time.sleep(2.0)
    assert not listening(standby_port), "a paused replica must not serve stale snapshots"
    assert leader.stop() == 0
    wait_for("standby serves after takeover", lambda: listening(standby_port), timeout=30)
    subscriber = Subscriber(standby_port, "gw-after")
    try:
        update = subscriber.next_update()
        assert from_bytes(update.payload).backends.keys() == {f"{kube.namespace}/mock"}
    finally:
        subscriber.close()
        standby.stop()


def test_a_taken_snapshot_port_stops_the_operator(kube: Kube, operators: Operators) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        op = operators.start("--snapshot-port", str(port), "--snapshot-host", "127.0.0.1")
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(MOCK))  # first pass: start serving
        assert op.proc is not None
        assert op.proc.wait(30) == 2, op.log()
    assert "--snapshot-port" in op.log()
