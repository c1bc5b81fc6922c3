"""``kanal operator``: kopf with kanal's settings, the sync loop and the snapshot server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import kopf

from kanal.controller.builders import BuildSettings
from kanal.controller.handlers import register
from kanal.controller.kube import Kube, KubeError, api_client
from kanal.controller.publisher import InMemoryPublisher, SnapshotPublisher
from kanal.controller.reconcile import Reconciler
from kanal.controller.sync import Sync

logger = logging.getLogger("kanal.operator")

PREFIX = "kanal.dev"
FINALIZER = f"{PREFIX}/finalizer"
PEERING_NAME = "kanal"
PEERING_CRD = Path(__file__).with_name("peering-crd.yaml")
"""kopf's KopfPeering and ClusterKopfPeering CRDs (kopf.dev/v1), for ``--peering``."""

Peering = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class OperatorConfig:
    """Everything ``kanal operator`` is told."""

    snapshot_namespace: str
    """Where the ``kanal-snapshot`` Secret lives (the operator's namespace)."""
    namespaces: tuple[str, ...] = ()
    """Served namespaces; empty means all (cluster-wide)."""
    peering: Peering = "auto"
    """on: kopf peering is mandatory (one active replica); off: standalone; auto: kopf's
    detection (peering if the peering CRD exists)."""
    peering_name: str = PEERING_NAME
    priority: int | None = None
    """Peering priority; default: earlier start = higher, so a running leader keeps
    leading and a restarted replica waits as the standby."""
    peering_lifetime: int = 60
    """Seconds after which a silent (killed) peer counts as gone."""
    snapshot_port: int | None = None
    """Serve snapshots to gateways over gRPC on this port (None: don't)."""
    snapshot_host: str = "0.0.0.0"
    snapshot_token: str | None = None
    """Shared token for the snapshot server (None: its own default, $KANAL_SNAPSHOT_TOKEN)."""
    liveness: str | None = None
    """kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz."""
    build: BuildSettings = field(default_factory=BuildSettings)
    debounce: float = 0.05
    verbose: bool = False


def default_priority(now: float | None = None) -> int:
    """Earlier start, higher priority (milliseconds before 2286, always positive)."""
    return 10**13 - int((time.time() if now is None else now) * 1000)


def kopf_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kanal's own names on the objects, not kopf's defaults
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.peering.name = config.peering_name
    settings.peering.lifetime = config.peering_lifetime
    settings.peering.priority = (
        config.priority if config.priority is not None else default_priority()
    )
    settings.peering.stealth = True
    settings.peering.mandatory = config.peering == "on"
    settings.peering.standalone = config.peering == "off"
    # Kubernetes Events only for warnings and errors: no Event per successful handler.
    # Newer kopf (1.45) posts log messages as Events only when asked to (posting.loggers;
    # older ones always did and ignore the attribute).
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # watches reconnect well before a silent connection could go stale
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    return settings


async def operate(
    config: OperatorConfig,
    *,
    stop_flag: asyncio.Event | None = None,
) -> None:
    """Run until ``stop_flag`` is set or SIGTERM/SIGINT arrives."""
    api = api_client()
    kube = Kube(api)
    server: Any = None
    publisher: SnapshotPublisher = InMemoryPublisher()
    if config.snapshot_port is not None:
        from kanal.controller.distribution import GrpcSnapshotServer

        server = GrpcSnapshotServer(token=config.snapshot_token)
        publisher = server

    stop = stop_flag if stop_flag is not None else asyncio.Event()
    fatal: list[str] = []

    async def start_server() -> None:
        # Only the active replica serves: a standby (paused by peering) never gets here, so
        # gateways behind a Service reach the replica that has the current snapshot.
        if server is None:
            return
        try:
            port = await server.start(config.snapshot_host, config.snapshot_port)
        except OSError as err:
            # not serving is not an option once asked to: stop, visibly (CrashLoopBackOff)
            fatal.append(f"--snapshot-port: {err}")
            stop.set()
            raise
        logger.info("snapshot server listening on %s:%d", config.snapshot_host, port)

    sync = Sync(
        kube,
        publisher,
        namespace=config.snapshot_namespace,
        debounce=config.debounce,
        before_first_publish=start_server,
    )
    reconciler = Reconciler(kube, config.build)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # in a pod its ServiceAccount, else $KUBECONFIG (same as api_client)
        return kopf.login_via_client(**kwargs)

    register(registry, kube=kube, reconciler=reconciler, sync=sync)

    @kopf.on.cleanup(id="stop-snapshot-server", registry=registry)
    async def stop_server(**_: Any) -> None:
        # here, not after kopf returns: kopf cancels every task started while it ran,
        # the server's own included
        if server is not None:
            await server.stop()

    namespaces = list(config.namespaces)
    if config.peering == "on":
        try:
            await kube.ensure_peering(config.peering_name, namespaces or None)
        except KubeError as err:
            api.close()  # type: ignore[no-untyped-call]
            hint = (
                f" (install {PEERING_CRD.name}, shipped next to this module)"
                if err.status == 404
                else ""
            )
            raise StartupError(
                f"--peering: cannot create the peering object: {err}{hint}"
            ) from None
    logger.info(
        "kanal operator: %s, peering %s, snapshot Secret in %s%s",
        f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces",
        {"on": f"on ({config.peering_name})", "off": "off", "auto": "auto"}[config.peering],
        config.snapshot_namespace,
        f", snapshot server on port {config.snapshot_port}" if server is not None else "",
    )
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(config),
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=config.liveness,
            stop_flag=stop,
        )
    finally:
        if server is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await server.stop()  # a no-op when the cleanup handler stopped it
        api.close()  # type: ignore[no-untyped-call]
    if fatal:
        raise StartupError(fatal[0])


class StartupError(Exception):
    """The operator cannot start as configured."""


def run(config: OperatorConfig) -> int:
    """The ``kanal operator`` process: logs, the event loop, exit code."""
    kopf.configure(verbose=config.verbose)
    quiet = logging.INFO if config.verbose else logging.WARNING
    for noisy in ("grpc", "aiohttp", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(quiet)
    # kopf logs every handler run at INFO; kanal logs what it does itself
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if config.verbose else logging.WARNING)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(operate(config))
    except StartupError as err:
        logger.error("%s", err)
        return 2
    return 0
