"""``kanal gateway`` in a cluster: routing snapshots from the operator, xDS-style.

The gateway keeps one ``kanal.v1.SnapshotService/Subscribe`` stream open to the operator
(proto/kanal/v1/snapshot.proto). It says hello with the version it serves, applies every
snapshot it receives and ACKs it, or NACKs it and keeps serving the last good one when
it cannot parse, validate or apply it.

When the operator is down the gateway keeps serving what it has, and a gateway that has
nothing yet — started while the operator is down, or the operator has no snapshot for it
within ``fallback_after`` seconds — reads the last good snapshot the operator persisted
in the Secret ``kanal-snapshot`` through the Kubernetes API. The stream is retried
forever, with exponential backoff and jitter; a snapshot from the stream always wins over
the persisted one. ``/readyz`` answers 503 until some snapshot is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from kanal.aio import run_until_signalled
from kanal.gateway._subscriber_backoff import Backoff
from kanal.gateway._subscriber_codec import MAX_SNAPSHOT_BYTES, inflate
from kanal.gateway._subscriber_kube import PersistedSnapshot, SnapshotUnavailable
from kanal.gateway.providers import ADAPTERS
from kanal.gateway.runtime import Runtime
from kanal.gateway.server import running_gateway
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import SNAPSHOT_SECRET, Snapshot, from_bytes
from kanal.v1 import snapshot_pb2 as pb
from kanal.v1 import snapshot_pb2_grpc as pb_grpc

log = logging.getLogger("kanal.gateway.subscriber")

_stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.SnapshotServiceStub

TOKEN_ENV = "KANAL_SNAPSHOT_TOKEN"
"""Environment variable with the operator's shared token (the operator reads the same)."""


@dataclass(frozen=True, slots=True)
class SubscriberSettings:
    operator: str
    """The operator's snapshot service, ``host:port``."""
    gateway_id: str
    """This replica's stable name (its pod name in a cluster)."""
    token: str = ""
    """Shared token the operator requires; "" sends none."""
    snapshot_namespace: str | None = None
    """Namespace of the persisted snapshot Secret; None disables the fallback."""
    snapshot_secret: str = SNAPSHOT_SECRET
    fallback_after: float = 5.0
    """Seconds to wait for a first snapshot from the operator before reading the Secret
    (at once if the operator cannot be reached)."""
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    """Reconnect delays double from initial to max, with jitter; also for Secret reads."""
    healthy_after: float = 10.0
    """A stream that lasted this long (or brought a snapshot) resets the backoff."""
    connect_timeout: float = 10.0
    """Seconds a new stream may take to connect and have its hello accepted."""
    keepalive: float = 20.0
    """Seconds between HTTP/2 pings that find an operator that vanished silently."""
    max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES
    """Largest snapshot accepted (on the wire, and once decompressed)."""


class SnapshotRefused(Exception):
    """An update the gateway cannot serve; the message goes into the NACK."""


def check_applicable(snapshot: Snapshot) -> None:
    """What Runtime.apply would trip over, refused before anything is built."""
    unknown = sorted({b.provider for b in snapshot.backends.values() if b.provider not in ADAPTERS})
    if unknown:
        raise SnapshotRefused(
            f"this gateway does not know provider(s) {', '.join(unknown)} "
            f"(it knows {', '.join(sorted(ADAPTERS))})"
        )


def decode_update(update: pb.SnapshotUpdate, limit: int = MAX_SNAPSHOT_BYTES) -> Snapshot:
    """The update's snapshot, validated; SnapshotRefused when it is unusable."""
    try:
        snapshot = from_bytes(inflate(update.payload, limit))
    except ValueError as err:  # pydantic's ValidationError is a ValueError too
        raise SnapshotRefused(f"invalid snapshot: {err}") from None
    if update.version and snapshot.version != update.version:
        raise SnapshotRefused(
            f"update names version {update.version} but its payload is {snapshot.version}"
        )
    check_applicable(snapshot)
    return snapshot


class SnapshotSubscriber:
    """Keeps ``runtime`` on the operator's latest snapshot; :meth:`run` until cancelled."""

    def __init__(
        self,
        runtime: Runtime,
        settings: SubscriberSettings,
        persisted: PersistedSnapshot | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.persisted = persisted
        self.source = ""
        """Where the snapshot in force came from: "operator", "secret" or "" (none yet)."""
        self.connected = False
        """True while a stream to the operator is open."""
        self.applied = asyncio.Event()
        """Set once any snapshot is applied."""
        self._unreachable = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._useful = False

    @property
    def version(self) -> str:
        """The version being served, "" before the first."""
        return self.runtime.snapshot.version if self.runtime.ready else ""

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._subscribe_forever(), name="snapshot-stream")]
        if self.persisted is not None:
            tasks.append(asyncio.create_task(self._fallback(), name="snapshot-fallback"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the stream ---------------------------------------------------------------------

    async def _subscribe_forever(self) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        failures = 0
        while True:
            started = time.monotonic()
            self._useful = False
            try:
                await self._session()
                outcome = "the operator ended the stream"
            except grpc.aio.AioRpcError as err:
                outcome = f"{err.code().name}: {err.details()}"
                if err.code() is grpc.StatusCode.UNAUTHENTICATED:
                    outcome += " (check the shared token)"
            except (grpc.aio.UsageError, asyncio.InvalidStateError, OSError) as err:
                outcome = f"{type(err).__name__}: {err}"
            except Exception as err:  # a bug must not end the subscription for good
                log.exception("snapshot stream failed unexpectedly")
                outcome = f"{type(err).__name__}: {err}"
            was_connected, self.connected, self._call = self.connected, False, None
            if not was_connected:
                self._unreachable.set()
            if self._useful or time.monotonic() - started >= self.settings.healthy_after:
                backoff.reset()
                failures = 0
            failures += 1
            delay = backoff.next()
            log.log(
                logging.WARNING if was_connected or failures == 1 else logging.INFO,
                "snapshot stream to %s %s: %s; serving %s; retrying in %.1fs",
                self.settings.operator,
                "lost" if was_connected else "failed",
                outcome,
                self.version or "nothing yet",
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One stream, until it ends (``_useful`` once it brought an update)."""
        interval = int(self.settings.keepalive * 1000)
        options = [
            ("grpc.max_receive_message_length", self.settings.max_snapshot_bytes),
            ("grpc.keepalive_time_ms", interval),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        metadata = (
            (("authorization", f"Bearer {self.settings.token}"),) if self.settings.token else ()
        )
        async with grpc.aio.insecure_channel(self.settings.operator, options=options) as channel:
            call: grpc.aio.StreamStreamCall = _stub(channel).Subscribe(metadata=metadata)
            try:
                hello = pb.Hello(gateway_id=self.settings.gateway_id, version=self.version)
                try:
                    async with asyncio.timeout(self.settings.connect_timeout):
                        await call.write(pb.SubscribeRequest(hello=hello))
                        await call.initial_metadata()  # the operator accepted the hello
                except TimeoutError:
                    raise OSError(f"no answer within {self.settings.connect_timeout:g}s") from None
                if not call.done():
                    self.connected, self._call = True, call
                    log.info(
                        "subscribed to %s as %s, serving %s",
                        self.settings.operator,
                        self.settings.gateway_id,
                        hello.version or "nothing yet",
                    )
                while True:
                    update = await call.read()
                    if update is grpc.aio.EOF:
                        code = await call.code()
                        if code is not grpc.StatusCode.OK:
                            details = await call.details()
                            raise OSError(f"stream ended: {code.name}: {details}")
                        return
                    await self._on_update(update)
                    self._useful = True
            finally:
                self._call = None
                call.cancel()

    async def _on_update(self, update: pb.SnapshotUpdate) -> None:
        if update.version and update.version == self.version:
            self.source = "operator"
            await self._send(pb.SubscribeRequest(ack=pb.Ack(version=update.version)))
            return
        try:
            snapshot = await asyncio.to_thread(
                decode_update, update, self.settings.max_snapshot_bytes
            )
            async with self._apply_lock:
                await self.runtime.apply(snapshot)
        except Exception as err:
            error = str(err) if isinstance(err, SnapshotRefused) else f"apply failed: {err!r}"
            log.error(
                "refused snapshot %s from the operator: %s; still serving %s",
                update.version or "(unnamed)",
                error,
                self.version or "nothing",
            )
            nack = pb.Nack(version=update.version, error=error[:4000])
            await self._send(pb.SubscribeRequest(nack=nack))
            return
        self.source = "operator"
        self.applied.set()
        log.info(
            "applied snapshot %s from the operator (%d routes, %d backends)",
            snapshot.version,
            len(snapshot.routes),
            len(snapshot.backends),
        )
        await self._send(pb.SubscribeRequest(ack=pb.Ack(version=snapshot.version)))

    async def _send(self, message: pb.SubscribeRequest) -> None:
        call = self._call
        if call is None:
            return
        async with self._write_lock:
            # a broken stream is noticed (and reconnected) by the reading side
            with contextlib.suppress(
                grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError
            ):
                await call.write(message)

    # -- the persisted snapshot ---------------------------------------------------------

    async def _fallback(self) -> None:
        """Until something is applied: after fallback_after seconds, or as soon as the
        operator is unreachable, read the persisted Secret (retrying with backoff)."""
        assert self.persisted is not None
        waits = [
            asyncio.create_task(self.applied.wait()),
            asyncio.create_task(self._unreachable.wait()),
        ]
        try:
            await asyncio.wait(
                waits, timeout=self.settings.fallback_after, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()
        if self.runtime.ready:
            return
        why = "cannot reach" if self._unreachable.is_set() else "no snapshot yet from"
        log.warning(
            "%s the operator at %s: loading the persisted snapshot from %s",
            why,
            self.settings.operator,
            self.persisted.where,
        )
        backoff = Backoff(max(1.0, self.settings.backoff_initial), self.settings.backoff_max)
        while not self.runtime.ready:
            try:
                snapshot = await self.persisted.load()
                check_applicable(snapshot)
                async with self._apply_lock:
                    if self.runtime.ready:
                        return  # the operator's stream was faster
                    await self.runtime.apply(snapshot)
            except (SnapshotUnavailable, SnapshotRefused) as err:
                error = str(err)
            except Exception as err:
                error = f"applying the persisted snapshot failed: {err!r}"
            else:
                self.source = "secret"
                self.applied.set()
                log.warning(
                    "serving persisted snapshot %s from %s (%d routes) until the operator is back",
                    snapshot.version,
                    self.persisted.where,
                    len(snapshot.routes),
                )
                await self._send(pb.SubscribeRequest(ack=pb.Ack(version=snapshot.version)))
                return
            delay = backoff.next()
            log.warning("%s; retrying in %.1fs", error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.applied.wait(), delay)


async def serve(
    settings: GatewaySettings,
    subscriber_settings: SubscriberSettings,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> int:
    """Run the gateway servers fed by the operator until ``stop`` is set."""
    async with running_gateway(settings) as running:
        persisted = None
        namespace = subscriber_settings.snapshot_namespace
        if settings.kube_api_url and namespace:
            persisted = PersistedSnapshot(settings, namespace, subscriber_settings.snapshot_secret)
        subscriber = SnapshotSubscriber(running.gateway.runtime, subscriber_settings, persisted)
        log.warning(
            "kanal gateway %s: HTTP on http://%s:%d/v1, gRPC on %s:%d, metrics on %s; "
            "snapshots from the operator at %s, %s",
            subscriber_settings.gateway_id,
            settings.host,
            running.http_port,
            settings.host,
            running.grpc_port,
            f"http://{settings.host}:{running.metrics_port or running.http_port}/metrics",
            subscriber_settings.operator,
            f"else from {persisted.where}"
            if persisted is not None
            else "no fallback (no Kubernetes API or snapshot namespace)",
        )
        if settings.anonymous_tenant is not None:
            log.warning(
                "callers without credentials are admitted as tenant %r while the snapshot "
                "holds no API keys",
                settings.anonymous_tenant,
            )
        task = asyncio.create_task(subscriber.run(), name="snapshot-subscriber")
        stopping = asyncio.create_task(stop.wait())
        if ready is not None:
            ready.set()
        code = 0
        try:
            await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
            if task.done():  # it never ends on its own: only a bug gets here
                log.error("the snapshot subscriber stopped: %r", task.exception())
                code = 1
        finally:
            stopping.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if persisted is not None:
                await persisted.close()
            log.info("kanal gateway %s: stopping", subscriber_settings.gateway_id)
    log.warning("kanal gateway %s: stopped", subscriber_settings.gateway_id)
    return code


def run(settings: GatewaySettings, subscriber_settings: SubscriberSettings) -> int:
    """Blocking entry point for the CLI; SIGTERM and SIGINT stop it cleanly."""
    return run_until_signalled(lambda stop: serve(settings, subscriber_settings, stop=stop))
