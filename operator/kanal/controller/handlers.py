"""The kopf handlers: thin. Parsing, building, reconciling and status live elsewhere.

- Indices (``@kopf.index``) hold every ModelBackend, LlmRoute, Secret (a fingerprint) and
  kanal-managed Knative Service. kopf runs no other handler before every index is filled
  from the initial listing, so the first snapshot after a restart is never a partial one.
- Event handlers notice changes and poke the sync loop (compile, persist, publish, status).
- Create/update/resume handlers reconcile each resource's Knative Service, and report
  ``kopf.TemporaryError`` for "not yet" and ``kopf.PermanentError`` for invalid input; the
  outcome goes into the resource's status through the sync loop.
- Events of managed Knative Services also repair drift: a Service deleted or edited by
  someone else is put back, level-based.

No finalizers: children are deleted by the garbage collector through owner references, and
a deleted resource leaves the snapshot through its watch event. A finalizer would only
block deletion (and namespace deletion) whenever the operator is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kanal.api import GROUP, LLM_ROUTE, MODEL_BACKEND, VERSION
from kanal.controller.builders import (
    BACKEND_LABEL,
    KNATIVE_GROUP,
    KNATIVE_PLURAL,
    KNATIVE_VERSION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ROUTE_LABEL,
    function_prompt,
)
from kanal.controller.index import (
    BackendEntry,
    RouteEntry,
    ServiceEntry,
    View,
    key_of,
    latest,
    parse_backend,
    parse_route,
    parse_secret,
    parse_service,
)
from kanal.controller.kube import Kube, KubeError
from kanal.controller.reconcile import Invalid, NotYet, Reconciler, failure, success
from kanal.controller.sync import Sync

logger = logging.getLogger("kanal.controller")

MB: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": MODEL_BACKEND.plural}
LR: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": LLM_ROUTE.plural}
KSVC: dict[str, Any] = {
    "group": KNATIVE_GROUP,
    "version": KNATIVE_VERSION,
    "plural": KNATIVE_PLURAL,
}
SECRETS: dict[str, Any] = {"group": "", "version": "v1", "plural": "secrets"}
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
KNATIVE_CRD = f"{KNATIVE_PLURAL}.{KNATIVE_GROUP}"

INDEX_BACKENDS = "kanal_backends"
INDEX_ROUTES = "kanal_routes"
INDEX_SECRETS = "kanal_secrets"
INDEX_SERVICES = "kanal_services"


def _entries(index: Any) -> list[Any]:
    """Values of a kopf index (key -> store of values)."""
    return [value for key in list(index) for value in index[key]]


def make_view(indices: Mapping[str, Any]) -> View:
    return View(
        backends=latest(_entries(indices[INDEX_BACKENDS])),
        routes=latest(_entries(indices[INDEX_ROUTES])),
        secrets=latest(_entries(indices[INDEX_SECRETS])),
        services=latest(_entries(indices[INDEX_SERVICES])),
    )


def register(
    registry: kopf.OperatorRegistry,
    *,
    kube: Kube,
    reconciler: Reconciler,
    sync: Sync,
) -> None:
    """Register every handler on ``registry``."""

    # -- indices ------------------------------------------------------------------------------

    @kopf.index(**MB, id=INDEX_BACKENDS, registry=registry)
    def kanal_backends(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {key_of(body): parse_backend(body)}

    @kopf.index(**LR, id=INDEX_ROUTES, registry=registry)
    def kanal_routes(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {key_of(body): parse_route(body)}

    @kopf.index(**SECRETS, id=INDEX_SECRETS, registry=registry)
    def kanal_secrets(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {key_of(body): parse_secret(body)}

    @kopf.index(**KSVC, id=INDEX_SERVICES, labels=MANAGED, registry=registry)
    def kanal_services(body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {key_of(body): parse_service(body)}

    # -- the sync loop ------------------------------------------------------------------------

    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(id="start-sync", registry=registry)
    async def start(**kwargs: Any) -> None:
        indices = {
            name: kwargs[name]
            for name in (INDEX_BACKENDS, INDEX_ROUTES, INDEX_SECRETS, INDEX_SERVICES)
        }
        sync.attach(lambda: make_view(indices))
        tasks.append(asyncio.create_task(sync.run(), name="kanal sync"))

    @kopf.on.cleanup(id="stop-sync", registry=registry)
    async def stop(**_: Any) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()

    # -- changes ------------------------------------------------------------------------------

    @kopf.on.event(**MB, id="backend-changed", registry=registry)
    async def backend_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        entry = parse_backend(body)
        sync.notice(MODEL_BACKEND.kind, entry.key, None if type == "DELETED" else entry.fingerprint)

    @kopf.on.event(**LR, id="route-changed", registry=registry)
    async def route_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        entry = parse_route(body)
        sync.notice(LLM_ROUTE.kind, entry.key, None if type == "DELETED" else entry.fingerprint)

    @kopf.on.event(**SECRETS, id="secret-changed", registry=registry)
    async def secret_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        sync.notice_secret(parse_secret(body), deleted=type == "DELETED")

    @kopf.on.event(**KSVC, id="service-changed", labels=MANAGED, registry=registry)
    async def service_event(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        entry = parse_service(body)
        deleted = type == "DELETED"
        sync.notice("Service", entry.key, None if deleted else entry.fingerprint)
        if deleted:
            reconciler.forget(*entry.key)
        await _repair(entry, deleted, kwargs)

    async def _repair(entry: ServiceEntry, deleted: bool, indices: Mapping[str, Any]) -> None:
        """Put back a managed Service that someone deleted or edited (level-based)."""
        labels = (entry.body.get("metadata") or {}).get("labels") or {}
        owner: BackendEntry | RouteEntry | None = None
        desired: Mapping[str, Any] | None = None
        try:
            if BACKEND_LABEL in labels:
                owner = _one(indices[INDEX_BACKENDS], (entry.namespace, labels[BACKEND_LABEL]))
                if isinstance(owner, BackendEntry) and owner.model is not None:
                    desired = reconciler.desired_backend_service(owner)
            elif ROUTE_LABEL in labels:
                owner = _one(indices[INDEX_ROUTES], (entry.namespace, labels[ROUTE_LABEL]))
                if isinstance(owner, RouteEntry) and owner.model is not None:
                    desired = reconciler.desired_function_service(owner)
        except Invalid:
            return
        if owner is None or owner.deleting or owner.uid != entry.owner_uid:
            return
        if desired is None or (desired.get("metadata") or {}).get("name") != entry.name:
            # its owner no longer wants this Service
            if not deleted and owner.model is not None:
                try:
                    await reconciler.remove(entry.namespace, entry.name, owner.uid)
                except KubeError as err:
                    logger.warning("removing Service %s/%s: %s", entry.namespace, entry.name, err)
            return
        if not deleted and reconciler.settled(desired, entry.body):
            return
        plural = MODEL_BACKEND.plural if isinstance(owner, BackendEntry) else LLM_ROUTE.plural
        try:
            if deleted:
                # The garbage collector deletes children of a deleted owner: make sure the
                # owner still exists before putting its child back.
                fresh = await kube.get_kanal(plural, owner.namespace, owner.name)
                meta = (fresh or {}).get("metadata") or {}
                if fresh is None or meta.get("uid") != owner.uid or meta.get("deletionTimestamp"):
                    return
            kind = MODEL_BACKEND.kind if isinstance(owner, BackendEntry) else LLM_ROUTE.kind
            outcome = await reconciler.ensure(desired, owner.uid, f"{kind} {owner.name}")
        except (NotYet, KubeError) as err:
            logger.warning("repairing Knative Service %s/%s: %s", entry.namespace, entry.name, err)
            return
        if outcome.action != "unchanged":
            logger.info(
                "repaired Knative Service %s/%s (%s)", entry.namespace, entry.name, outcome.action
            )

    # -- children -----------------------------------------------------------------------------

    async def _reconcile(
        kind: str, entry: BackendEntry | RouteEntry, indices: Mapping[str, Any]
    ) -> None:
        services = indices[INDEX_SERVICES]

        def lookup(namespace: str, name: str) -> ServiceEntry | None:
            found = _one(services, (namespace, name))
            return found if isinstance(found, ServiceEntry) else None

        try:
            if isinstance(entry, BackendEntry):
                outcome = await reconciler.backend(entry, lookup)
                serving = entry.model is not None and entry.model.spec.serving is not None
            else:
                outcome = await reconciler.route(entry, lookup)
                serving = entry.model is not None and function_prompt(entry.model) is not None
        except NotYet as err:
            sync.record(kind, entry.key, failure(entry.generation, err))
            raise kopf.TemporaryError(err.message, delay=err.delay) from None
        except Invalid as err:
            sync.record(kind, entry.key, failure(entry.generation, err))
            raise kopf.PermanentError(err.message) from None
        except KubeError as err:
            sync.record(kind, entry.key, failure(entry.generation, NotYet("ApiError", str(err))))
            raise kopf.TemporaryError(f"Kubernetes API: {err}", delay=10) from None
        sync.record(kind, entry.key, success(entry.generation, outcome, serving))

    @kopf.on.event(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        id="knative-installed",
        field="metadata.name",
        value=KNATIVE_CRD,
        registry=registry,
    )
    async def knative_installed(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        """Knative Serving arrived after kanal: reconcile what waits for it now, rather
        than at kopf's next retry."""
        if type == "DELETED" or not _established(body):
            return
        waiting = [
            (kind, entry)
            for kind, index in (
                (MODEL_BACKEND.kind, kwargs[INDEX_BACKENDS]),
                (LLM_ROUTE.kind, kwargs[INDEX_ROUTES]),
            )
            for entry in _entries(index)
            if (result := sync.reconciled.get((kind, entry.key))) is not None
            and result.reason == "KnativeServingMissing"
        ]
        if waiting:
            logger.info("Knative Serving is installed: reconciling %d waiting", len(waiting))
        for kind, entry in waiting:
            with contextlib.suppress(kopf.TemporaryError, kopf.PermanentError):
                await _reconcile(kind, entry, kwargs)

    @kopf.on.resume(**MB, id="reconcile", registry=registry)
    @kopf.on.create(**MB, id="reconcile", registry=registry)
    @kopf.on.update(**MB, id="reconcile", registry=registry)
    async def reconcile_backend(body: kopf.Body, **kwargs: Any) -> None:
        await _reconcile(MODEL_BACKEND.kind, parse_backend(body), kwargs)

    @kopf.on.resume(**LR, id="reconcile", registry=registry)
    @kopf.on.create(**LR, id="reconcile", registry=registry)
    @kopf.on.update(**LR, id="reconcile", registry=registry)
    async def reconcile_route(body: kopf.Body, **kwargs: Any) -> None:
        await _reconcile(LLM_ROUTE.kind, parse_route(body), kwargs)


def _established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _one(index: Any, key: Any) -> Any:
    """The value stored under ``key`` in a kopf index, if any."""
    if key not in index:
        return None
    return next(iter(index[key]), None)
