"""Serves routing snapshots to gateway replicas over gRPC (``kanal.v1.SnapshotService``).

The operator calls :meth:`GrpcSnapshotServer.publish` with every snapshot it compiles;
each subscribed gateway gets the latest one whenever it differs from what that gateway
runs, and ACKs (or NACKs) it. The protocol is documented in proto/kanal/v1/snapshot.proto.

- ``publish`` is latest-wins and cheap: it stores the snapshot and wakes the streams. It
  may be called from the server's event loop or from any other thread (kopf runs sync
  handlers in threads), also before :meth:`start`.
- Every stream has its own writer, so a slow gateway delays only itself, and when it
  catches up it gets the newest snapshot, skipping those published in between.
- The bytes of a version are encoded once (in a worker thread, off the event loop) and
  shared by all streams; large ones gzipped (gateways detect gzip by its magic bytes).
- :meth:`acks` reports the version each connected gateway serves; a gateway is forgotten
  when its stream ends.
- With a shared token (argument, or the environment variable ``KANAL_SNAPSHOT_TOKEN``),
  calls must send ``authorization: Bearer <token>``: the payload carries upstream keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from kanal.snapshot import Snapshot, to_bytes
from kanal.v1 import snapshot_pb2 as pb
from kanal.v1 import snapshot_pb2_grpc as pb_grpc

log = logging.getLogger("kanal.controller.distribution")

TOKEN_ENV = "KANAL_SNAPSHOT_TOKEN"
"""Environment variable with the shared token (the gateway reads the same one)."""
GZIP_ABOVE = 16 * 1024
"""Payloads of at least this many bytes are sent gzip-compressed."""

_register: Callable[[pb_grpc.SnapshotServiceServicer, Any], None] = (
    pb_grpc.add_SnapshotServiceServicer_to_server
)

_SERVER_OPTIONS = [
    # a port taken by another process is an error, not a silently shared port
    ("grpc.so_reuseport", 0),
    # find gateways that vanished without closing their connection (node failure)
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # gateways ping every 20 s to find a vanished operator; allow it
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """One connected gateway, as :meth:`GrpcSnapshotServer.gateways` reports it."""

    gateway_id: str
    peer: str
    """Its address as gRPC sees it, e.g. ``ipv4:10.0.3.7:41234``."""
    version: str
    """Version it serves (acknowledged, or named in its hello); "" when none yet."""
    connected_since: float
    """Wall-clock time (seconds since the epoch) its stream opened."""
    nacked_version: str = ""
    """Version it refused since its last ACK ("" when none): it serves ``version`` instead."""
    nack_error: str = ""


@dataclass(slots=True, eq=False)
class _Stream:
    """Server-side state of one Subscribe stream."""

    gateway_id: str
    peer: str
    acked: str
    """What the gateway says it serves (hello, then each ACK)."""
    sent: str
    """Last version written on this stream (never resent, so a NACKed one is not retried)."""
    connected_since: float = field(default_factory=time.time)
    nacked: str = ""
    nack_error: str = ""
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self) -> GatewayStatus:
        return GatewayStatus(
            gateway_id=self.gateway_id,
            peer=self.peer,
            version=self.acked,
            connected_since=self.connected_since,
            nacked_version=self.nacked,
            nack_error=self.nack_error,
        )


class GrpcSnapshotServer:
    """``kanal.v1.SnapshotService`` on grpc.aio; implements the operator's SnapshotPublisher.

    ``token``: shared token the gateways must send; None reads ``$KANAL_SNAPSHOT_TOKEN``,
    "" (or an unset variable) serves without authentication.
    """

    def __init__(self, *, token: str | None = None, stop_grace: float = 1.0) -> None:
        if token is None:
            token = os.environ.get(TOKEN_ENV, "")
        self._token = token.strip()
        self._stop_grace = stop_grace
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self._streams: set[_Stream] = set()
        self._by_gateway: dict[str, _Stream] = {}
        self._encoded: tuple[str, asyncio.Future[bytes]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping = False

    # -- SnapshotPublisher ----------------------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the one every gateway should run (latest wins). Never blocks
        on gateways; thread-safe."""
        version = snapshot.version
        with self._lock:
            if self._latest is not None and self._latest.version == version:
                return
            self._latest = snapshot
            loop = self._loop
        log.debug("publishing snapshot %s", version)
        if loop is None:
            return  # not serving yet: streams opened later will get it
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_all()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nothing to wake
                loop.call_soon_threadsafe(self._wake_all)

    def acks(self) -> dict[str, str]:
        """Gateway id -> version it serves, for every connected gateway ("" when it
        serves nothing yet or refused everything sent so far)."""
        with self._lock:
            return {gateway_id: s.acked for gateway_id, s in self._by_gateway.items()}

    # -- more status ----------------------------------------------------------------------

    @property
    def latest_version(self) -> str | None:
        """Version of the latest published snapshot, None before the first."""
        latest = self._latest
        return latest.version if latest is not None else None

    def gateways(self) -> list[GatewayStatus]:
        """Every connected gateway with its version and last refusal, sorted by id."""
        with self._lock:
            streams = list(self._by_gateway.values())
        return sorted((s.status() for s in streams), key=lambda g: g.gateway_id)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (0 picks a free port); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("GrpcSnapshotServer is already started")
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        _register(_Servicer(self), server)
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as err:  # newer grpcio raise instead of returning 0
            raise OSError(f"snapshot server: could not bind {address}: {err}") from None
        if not bound:
            raise OSError(f"snapshot server: could not bind {address}")
        with self._lock:  # before serving: a publish from another thread must wake streams
            self._loop = asyncio.get_running_loop()
            self._stopping = False
        try:
            await server.start()
        except BaseException:
            with self._lock:
                self._loop = None
            raise
        self._server = server
        if not self._token:
            log.warning(
                "snapshot server on %s without a shared token: any client that reaches it "
                "gets the snapshots, upstream keys included (set %s)",
                address,
                TOKEN_ENV,
            )
        else:
            log.info("snapshot server on %s (shared token required)", address)
        return int(bound)

    async def stop(self) -> None:
        """End every stream with UNAVAILABLE (gateways reconnect with backoff) and stop."""
        server = self._server
        if server is None:
            return
        with self._lock:
            self._stopping = True
        self._wake_all()
        await server.stop(self._stop_grace)
        with self._lock:
            self._loop = None
            self._streams.clear()
            self._by_gateway.clear()
        self._server = None
        self._encoded = None

    # -- streams --------------------------------------------------------------------------

    def _wake_all(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.wake.set()

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        if not self._token:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(token.strip().encode(), self._token.encode())
        return False

    async def subscribe(self, context: grpc.aio.ServicerContext) -> None:
        if not self._authorized(context):
            log.warning("refused a snapshot subscriber from %s: bad token", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        hello = first.hello
        if not hello.gateway_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.gateway_id is empty")
        stream = _Stream(hello.gateway_id, context.peer(), acked=hello.version, sent=hello.version)
        reader: asyncio.Task[None] | None = None
        with self._lock:
            self._streams.add(stream)
            replaced = self._by_gateway.get(stream.gateway_id)
            self._by_gateway[stream.gateway_id] = stream
        # from here on every exit, cancellation included (a gateway that goes away cancels
        # the handler at any await), must unregister the stream
        try:
            log.info(
                "gateway %s %s from %s, serving %s",
                stream.gateway_id,
                "reconnected" if replaced is not None else "subscribed",
                stream.peer,
                hello.version or "nothing yet",
            )
            await context.send_initial_metadata(())
            reader = asyncio.create_task(self._read(context, stream))
            await self._write(context, stream)
        finally:
            if reader is not None:
                reader.cancel()
            with self._lock:
                self._streams.discard(stream)
                if self._by_gateway.get(stream.gateway_id) is stream:
                    del self._by_gateway[stream.gateway_id]
            log.info("gateway %s unsubscribed", stream.gateway_id)

    async def _write(self, context: grpc.aio.ServicerContext, stream: _Stream) -> None:
        while True:
            stream.wake.clear()  # before looking: a publish from now on sets it again
            if self._stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "operator shutting down")
            if stream.closed:
                return
            latest = self._latest
            if latest is None or latest.version in (stream.sent, stream.acked):
                await stream.wake.wait()
                continue
            payload = await self._payload(latest)
            await context.write(pb.SnapshotUpdate(version=latest.version, payload=payload))
            stream.sent = latest.version
            log.debug("sent snapshot %s to gateway %s", latest.version, stream.gateway_id)

    async def _read(self, context: grpc.aio.ServicerContext, stream: _Stream) -> None:
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                kind = message.WhichOneof("kind")
                if kind == "ack":
                    stream.acked = message.ack.version
                    stream.nacked = stream.nack_error = ""  # it serves a good one again
                    log.info("gateway %s serves %s", stream.gateway_id, stream.acked)
                elif kind == "nack":
                    stream.nacked = message.nack.version
                    stream.nack_error = message.nack.error[:2000]
                    log.warning(
                        "gateway %s refused snapshot %s: %s (it keeps serving %s)",
                        stream.gateway_id,
                        stream.nacked,
                        stream.nack_error,
                        stream.acked or "nothing",
                    )
                else:
                    log.warning("gateway %s sent a second hello; ignored", stream.gateway_id)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the stream broke: the writer ends the call
            log.debug("stream of gateway %s broke: %r", stream.gateway_id, err)
        finally:
            stream.closed = True
            stream.wake.set()

    async def _payload(self, snapshot: Snapshot) -> bytes:
        """The snapshot's bytes, encoded once per version in a worker thread."""
        cached = self._encoded
        if cached is None or cached[0] != snapshot.version:
            loop = asyncio.get_running_loop()
            encoded: asyncio.Future[bytes] = loop.run_in_executor(None, encode, snapshot)
            cached = self._encoded = (snapshot.version, encoded)
        return await asyncio.shield(cached[1])


def encode(snapshot: Snapshot) -> bytes:
    """A SnapshotUpdate's payload: ``to_bytes``, gzipped from GZIP_ABOVE bytes on (snapshot
    JSON is repetitive: 2,000 routes are ~1.7 MiB raw, ~30 KiB gzipped, ~7 ms to compress)."""
    raw = to_bytes(snapshot)
    if len(raw) < GZIP_ABOVE:
        return raw
    return gzip.compress(raw, compresslevel=6, mtime=0)


class _Servicer(pb_grpc.SnapshotServiceServicer):
    def __init__(self, server: GrpcSnapshotServer) -> None:
        self._server = server

    async def Subscribe(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._server.subscribe(context)


__all__ = ["GZIP_ABOVE", "TOKEN_ENV", "GatewayStatus", "GrpcSnapshotServer", "encode"]
