"""The operator's snapshot server (GrpcSnapshotServer) on 127.0.0.1, spoken to at the protocol
level: hello/update/ack/nack, latest-wins fan-out, slow subscribers, tokens, shutdown."""

from __future__ import annotations

import secrets
import threading
import time

import grpc
import pytest
from distkit import RawSubscriber, ServerThread, snapshot_with_routes
from pydantic import SecretStr

from kanal.controller.distribution import encode
from kanal.snapshot import Snapshot, from_bytes
from kanal.v1 import snapshot_pb2 as pb

A = snapshot_with_routes("a")
B = snapshot_with_routes("a", "b")
C = snapshot_with_routes("a", "b", "c")


def incompressible(base: Snapshot, size: int) -> Snapshot:
    """``base`` with a long random upstream key: a payload gzip cannot shrink."""
    key = SecretStr(secrets.token_urlsafe(size))
    backends = {k: b.model_copy(update={"api_key": key}) for k, b in base.backends.items()}
    return Snapshot(backends=backends, routes=base.routes)


def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_hello_gets_the_latest_then_every_change_and_acks_are_reported() -> None:
    with ServerThread() as server, RawSubscriber(server.target, "gw-1") as gw:
        assert gw.nothing_within(0.3)  # nothing published yet: nothing sent
        wait_for(lambda: server.acks() == {"gw-1": ""})  # connected, serves nothing
        server.publish(A)
        update = gw.next()
        assert update.version == A.version
        assert from_bytes(update.payload) == A  # credentials and all: the wire form
        gw.ack(A.version)
        wait_for(lambda: server.acks() == {"gw-1": A.version})
        server.publish(A)  # same version again: nothing new to send
        assert gw.nothing_within(0.3)
        server.publish(B)
        assert gw.next().version == B.version
        [status] = server.server.gateways()
        assert status.gateway_id == "gw-1" and status.peer.startswith("ipv4:127.0.0.1:")
        assert status.version == A.version  # B sent, not yet acknowledged
        gw.ack(B.version)
        wait_for(lambda: server.acks() == {"gw-1": B.version})


def test_a_gateway_already_running_the_latest_gets_nothing() -> None:
    with ServerThread() as server:
        server.publish(B)
        with RawSubscriber(server.target, "gw-1", version=B.version) as gw:
            assert gw.nothing_within(0.5)
            wait_for(lambda: server.acks() == {"gw-1": B.version})
        with RawSubscriber(server.target, "gw-2", version=A.version) as gw:
            assert gw.next().version == B.version  # runs an older one: gets the latest


def test_a_nacked_version_is_reported_and_not_resent_the_next_one_is() -> None:
    with ServerThread() as server, RawSubscriber(server.target, "gw-1") as gw:
        server.publish(A)
        gw.ack(gw.next().version)
        server.publish(B)
        gw.nack(gw.next().version, "cannot apply: unknown provider")
        wait_for(lambda: server.server.gateways()[0].nacked_version == B.version)
        [status] = server.server.gateways()
        assert (status.version, status.nack_error) == (A.version, "cannot apply: unknown provider")
        assert server.acks() == {"gw-1": A.version}
        assert gw.nothing_within(0.5)  # B is not retried on this stream
        server.publish(C)
        gw.ack(gw.next().version)
        wait_for(lambda: server.acks() == {"gw-1": C.version})
        assert server.server.gateways()[0].nacked_version == ""  # it serves a newer one now


def test_a_slow_gateway_blocks_nobody_and_skips_to_the_latest() -> None:
    """A gateway that stops reading stalls only its own stream (HTTP/2 flow control); when
    it reads again it gets the newest snapshot, not the backlog."""
    big = [incompressible(A, 300_000) for _ in range(12)]
    assert len({s.version for s in big}) == len(big)  # versions hashed before timing publish
    assert len(encode(big[0])) > 200_000  # even gzipped
    with (
        ServerThread() as server,
        RawSubscriber(server.target, "slow", paused=True) as slow,
        RawSubscriber(server.target, "fast") as fast,
    ):
        wait_for(lambda: set(server.acks()) == {"slow", "fast"})
        for snapshot in big:
            started = time.monotonic()
            server.publish(snapshot)
            assert time.monotonic() - started < 0.5  # never waits for gateways (slow is stuck)
            assert fast.next(timeout=5).version == snapshot.version
            fast.ack(snapshot.version)
        wait_for(lambda: server.acks()["fast"] == big[-1].version)
        slow.reading.set()
        received = [slow.next(timeout=5).version]
        while received[-1] != big[-1].version:
            received.append(slow.next(timeout=5).version)
        # the one stuck in flight, then the latest: everything in between was skipped
        assert len(received) <= 3, len(received)
        assert slow.nothing_within(0.3)


def test_publish_from_many_threads_at_once_ends_on_one_latest() -> None:
    snapshots = [snapshot_with_routes(f"t{i}") for i in range(16)]
    with ServerThread() as server, RawSubscriber(server.target, "gw-1") as gw:
        threads = [threading.Thread(target=server.publish, args=(s,)) for s in snapshots]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        latest = server.server.latest_version
        assert latest in {s.version for s in snapshots}
        seen = gw.next().version
        while seen != latest:
            seen = gw.next().version


def test_a_reconnect_with_the_same_id_replaces_the_old_stream() -> None:
    with ServerThread() as server:
        server.publish(A)
        old = RawSubscriber(server.target, "gw-1")
        old.ack(old.next().version)
        wait_for(lambda: server.acks() == {"gw-1": A.version})
        with RawSubscriber(server.target, "gw-1", version=A.version) as new:
            old.close()  # the old stream ending must not forget the new one
            time.sleep(0.3)
            assert server.acks() == {"gw-1": A.version}
            server.publish(B)
            assert new.next().version == B.version
        wait_for(lambda: server.acks() == {})  # disconnected gateways are forgotten


def test_gateways_that_come_and_go_at_any_moment_leave_nothing_behind() -> None:
    """A gateway may vanish at any await of the server's handler (even right after its
    hello): every stream is unregistered, none lingers in acks()."""
    with ServerThread() as server:
        server.publish(A)
        for i in range(120):
            gw = RawSubscriber(server.target, f"gw-{i}")
            if i % 3 == 0:
                gw.next()
            gw.close()
        with RawSubscriber(server.target, "stays") as stays:
            stays.ack(stays.next().version)
            wait_for(lambda: server.acks() == {"stays": A.version})
        wait_for(lambda: server.acks() == {})


def test_the_first_message_must_be_a_hello_with_an_id() -> None:
    with ServerThread() as server:
        ack_first = pb.SubscribeRequest(ack=pb.Ack(version="x"))
        with RawSubscriber(server.target, "gw", first=ack_first) as gw:
            assert gw.code() is grpc.StatusCode.INVALID_ARGUMENT
        with RawSubscriber(server.target, "") as gw:
            assert gw.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert server.acks() == {}


@pytest.mark.parametrize("token", [None, "wrong"])
def test_with_a_token_other_callers_are_unauthenticated(token: str | None) -> None:
    with ServerThread(token="s3cret") as server:
        server.publish(A)
        with RawSubscriber(server.target, "intruder", token=token) as gw:
            assert gw.code() is grpc.StatusCode.UNAUTHENTICATED
            assert gw.updates.empty()
        with RawSubscriber(server.target, "gw-1", token="s3cret") as gw:
            assert gw.next().version == A.version
        assert "intruder" not in server.acks()


def test_stop_ends_streams_unavailable_and_a_new_server_serves_again() -> None:
    server = ServerThread()
    server.publish(A)
    gw = RawSubscriber(server.target, "gw-1")
    try:
        gw.next()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        assert gw.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        gw.close()
        server.stop()
    with ServerThread(port=server.port) as again:  # the same port, like a restarted operator
        again.publish(B)
        with RawSubscriber(again.target, "gw-1", version=A.version) as gw:
            assert gw.next().version == B.version
