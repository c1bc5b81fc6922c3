"""Reconciling children: make each resource's Knative Service match its spec (idempotent).

``ensure`` creates the Service when it is missing, leaves it alone when the owned fields
match, and otherwise patches only the owned fields. When the owned fields differ, a
server-side dry run of the patch shows what admission (Knative's defaulting webhook) would
store; if that equals what is stored, the difference was defaulting and nothing is written.
That verdict is remembered per Service generation, so the dry run happens once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kanal.controller.builders import (
    BuildSettings,
    InvalidChild,
    backend_service,
    controller_uid,
    function_service,
    function_service_name,
    needs_update,
    owned_digest,
    update_patch,
)
from kanal.controller.index import BackendEntry, RouteEntry, ServiceEntry
from kanal.controller.kube import Conflict
from kanal.controller.status import ReconcileResult

logger = logging.getLogger("kanal.controller")


Lookup = Callable[[str, str], ServiceEntry | None]
"""(namespace, name) -> the managed Knative Service as last seen, if any."""


class NotYet(Exception):
    """Retry later (kopf.TemporaryError): something else has to happen first."""

    def __init__(self, reason: str, message: str, delay: float = 30.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.delay = delay


class Invalid(Exception):
    """The input cannot work as written (kopf.PermanentError): the user must change it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ServiceApi(Protocol):
    """The Knative Service calls reconciling needs (kanal.controller.kube.Kube has them)."""

    async def knative_installed(self) -> bool: ...

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_service(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_service(
        self, namespace: str, name: str, ops: list[dict[str, Any]], *, dry_run: bool = False
    ) -> dict[str, Any]: ...

    async def delete_service(self, namespace: str, name: str, uid: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What ``ensure`` did: created, updated, unchanged, deleted or absent."""

    action: str
    service: str


class Reconciler:
    """Creates, patches and deletes the Knative Services of backends and routes."""

    def __init__(self, api: ServiceApi, settings: BuildSettings | None = None) -> None:
        self.api = api
        self.settings = settings or BuildSettings()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._verified: dict[tuple[str, str], tuple[str, Any, str]] = {}
        self.counts: dict[str, int] = {"created": 0, "updated": 0, "deleted": 0, "dry_runs": 0}

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    # -- per kind -----------------------------------------------------------------------------

    def desired_backend_service(self, entry: BackendEntry) -> dict[str, Any] | None:
        """The backend's Service; None when it runs nowhere in the cluster."""
        if entry.model is None:
            raise Invalid("InvalidSpec", f"the spec does not parse: {entry.error}")
        try:
            return backend_service(entry.model, entry.uid, self.settings)
        except InvalidChild as err:
            raise Invalid(err.reason, err.message) from None

    def desired_function_service(self, entry: RouteEntry) -> dict[str, Any] | None:
        """The route's prompt function Service; None unless prompt.expose.function."""
        if entry.model is None:
            raise Invalid("InvalidSpec", f"the spec does not parse: {entry.error}")
        try:
            return function_service(entry.model, entry.uid, self.settings)
        except InvalidChild as err:
            raise Invalid(err.reason, err.message) from None

    async def backend(self, entry: BackendEntry, lookup: Lookup | None = None) -> Outcome:
        """Make the backend's Knative Service match ``spec.serving`` (or remove it)."""
        desired = self.desired_backend_service(entry)
        return await self._converge(
            desired, entry.namespace, entry.name, entry.uid, f"ModelBackend {entry.name}", lookup
        )

    async def route(self, entry: RouteEntry, lookup: Lookup | None = None) -> Outcome:
        """Make the route's prompt function Service match ``spec.prompt.expose``."""
        desired = self.desired_function_service(entry)
        name = function_service_name(entry.name)
        return await self._converge(
            desired, entry.namespace, name, entry.uid, f"LlmRoute {entry.name}", lookup
        )

    async def _converge(
        self,
        desired: Mapping[str, Any] | None,
        namespace: str,
        name: str,
        owner_uid: str,
        owner: str,
        lookup: Lookup | None,
    ) -> Outcome:
        # ``lookup`` (the watch-fed index) saves the GET when it already shows the answer;
        # should it lag, the Service's own watch event repairs whatever it missed.
        indexed = lookup(namespace, name) if lookup is not None else None
        if desired is None:
            if lookup is not None and indexed is None:
                return Outcome("absent", name)
            return await self.remove(namespace, name, owner_uid)
        if (
            indexed is not None
            and indexed.owner_uid == owner_uid
            and self.settled(desired, indexed.body)
        ):
            return Outcome("unchanged", name)
        return await self.ensure(desired, owner_uid, owner)

    def settled(self, desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
        """True when ``actual`` needs nothing: owned fields equal, or known to differ only
        by admission defaults (verified by a dry run for this generation)."""
        if not needs_update(desired, actual):
            return True
        return self._verified.get(_key(desired)) == _verdict(desired, actual)

    # -- generic ------------------------------------------------------------------------------

    async def ensure(self, desired: Mapping[str, Any], owner_uid: str, owner: str) -> Outcome:
        namespace = desired["metadata"]["namespace"]
        name = desired["metadata"]["name"]
        async with self._lock(namespace, name):
            actual = await self.api.get_service(namespace, name)
            if actual is None:
                if not await self.api.knative_installed():
                    raise NotYet(
                        "KnativeServingMissing",
                        "Knative Serving is not installed (no serving.knative.dev/v1 services); "
                        f"{owner} waits for it",
                    )
                try:
                    await self.api.create_service(desired)
                except Conflict:
                    actual = await self.api.get_service(namespace, name)
                    if actual is None:
                        raise NotYet("Conflict", f"Service {name} appeared and vanished") from None
                else:
                    self.counts["created"] += 1
                    logger.info("created Knative Service %s/%s for %s", namespace, name, owner)
                    return Outcome("created", name)
            if controller_uid(actual) != owner_uid:
                raise NotYet(
                    "ServiceConflict",
                    f"a Knative Service {namespace}/{name} exists and is not controlled by "
                    f"{owner}; delete or rename it",
                    delay=60.0,
                )
            if self.settled(desired, actual):
                return Outcome("unchanged", name)
            ops = update_patch(desired, actual)
            self.counts["dry_runs"] += 1
            defaulted = await self.api.patch_service(namespace, name, ops, dry_run=True)
            if not needs_update(defaulted, actual):
                # Only admission defaults differ: what is stored is what we asked for.
                self._verified[(namespace, name)] = _verdict(desired, actual)
                return Outcome("unchanged", name)
            await self.api.patch_service(namespace, name, ops)
            self._verified.pop((namespace, name), None)
            self.counts["updated"] += 1
            logger.info("updated Knative Service %s/%s for %s", namespace, name, owner)
            return Outcome("updated", name)

    async def remove(self, namespace: str, name: str, owner_uid: str) -> Outcome:
        """Delete the Service if (and only if) this owner controls it."""
        async with self._lock(namespace, name):
            actual = await self.api.get_service(namespace, name)
            if actual is None or controller_uid(actual) != owner_uid:
                return Outcome("absent", name)
            uid = str((actual.get("metadata") or {}).get("uid"))
            await self.api.delete_service(namespace, name, uid)
            self._verified.pop((namespace, name), None)
            self.counts["deleted"] += 1
            logger.info("deleted Knative Service %s/%s (no longer wanted)", namespace, name)
            return Outcome("deleted", name)

    def forget(self, namespace: str, name: str) -> None:
        """Drop per-Service memory (the Service is gone)."""
        self._verified.pop((namespace, name), None)
        lock = self._locks.get((namespace, name))
        if lock is not None and not lock.locked():
            del self._locks[(namespace, name)]


def _key(ksvc: Mapping[str, Any]) -> tuple[str, str]:
    meta = ksvc.get("metadata") or {}
    return (str(meta.get("namespace")), str(meta.get("name")))


def _verdict(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> tuple[str, Any, str]:
    meta = actual.get("metadata") or {}
    return (str(meta.get("uid")), meta.get("generation"), owned_digest(desired))


def success(generation: int | None, outcome: Outcome, serving: bool) -> ReconcileResult:
    if outcome.action in ("absent", "deleted") and not serving:
        return ReconcileResult(generation, "True", "Reconciled", "nothing to run in the cluster")
    return ReconcileResult(
        generation, "True", "Reconciled", f"Knative Service {outcome.service} is up to date"
    )


def failure(generation: int | None, err: NotYet | Invalid) -> ReconcileResult:
    return ReconcileResult(generation, "False", err.reason, err.message)
