"""The one loop that turns the index into a snapshot and statuses.

Every change that matters (a backend, route, referenced Secret, API-key Secret or Knative
Service) pokes the loop; after a short debounce it runs one pass:

1. compile every backend and route (the same compiler as ``kanal up``);
2. on a new version: hand the snapshot to the publisher (gateways over gRPC) and persist
   it in the Secret ``kanal-snapshot`` in the operator's namespace;
3. compute the desired status of every ModelBackend and LlmRoute and patch the ones that
   differ (this is the only place that writes status).

Passes never overlap, and a poke during a pass causes one more pass, so the last state
always wins.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from kanal.api import LLM_ROUTE, MODEL_BACKEND, Secret
from kanal.controller.builders import MANAGED_BY, MANAGED_BY_LABEL, function_service_name
from kanal.controller.conditions import now_rfc3339
from kanal.controller.index import (
    BackendEntry,
    Key,
    RouteEntry,
    SecretEntry,
    View,
    secret_from_body,
)
from kanal.controller.kube import Conflict, KubeError
from kanal.controller.publisher import SnapshotPublisher
from kanal.controller.status import (
    ReconcileResult,
    backend_status,
    differs,
    is_ready,
    route_status,
)
from kanal.snapshot import (
    SNAPSHOT_KEY,
    SNAPSHOT_SECRET,
    VERSION_ANNOTATION,
    Snapshot,
    compile_snapshot,
    to_bytes,
)

logger = logging.getLogger("kanal.controller.sync")

ACKS_ANNOTATION = "kanal.dev/gateway-acks"
"""Annotation on the snapshot Secret: JSON {gateway id: snapshot version it runs}."""
GZIP_ABOVE = 256 * 1024
"""Snapshots from this size on are stored gzip-compressed (a Secret holds at most 1 MiB:
about 1,100 routes as plain JSON); smaller ones stay readable with kubectl and base64."""
WRITTEN_GRACE = 10.0
"""Seconds during which a status we wrote counts over an older one still in the index."""


def encode(snapshot: Snapshot) -> bytes:
    """The Secret's ``snapshot.json``: ``to_bytes``, gzipped when large (readers tell the two
    apart by gzip's magic bytes; JSON never starts with them). Deterministic (mtime 0)."""
    raw = to_bytes(snapshot)
    if len(raw) < GZIP_ABOVE:
        return raw
    return gzip.compress(raw, compresslevel=6, mtime=0)


class SyncApi(Protocol):
    """The API calls a pass makes (kanal.controller.kube.Kube has them)."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_secret(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


@dataclasses.dataclass
class Stats:
    passes: int = 0
    versions: int = 0
    status_writes: int = 0
    secret_reads: int = 0
    persists: int = 0
    last_compile_seconds: float = 0.0
    last_pass_seconds: float = 0.0


class Sync:
    """Debounced compile -> publish -> persist -> status, one pass at a time."""

    def __init__(
        self,
        api: SyncApi,
        publisher: SnapshotPublisher,
        *,
        namespace: str,
        view: Callable[[], View] | None = None,
        debounce: float = 0.05,
        status_concurrency: int = 8,
        ack_interval: float = 2.0,
        now: Callable[[], str] = now_rfc3339,
        before_first_publish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.api = api
        self.publisher = publisher
        self.namespace = namespace
        self.debounce = debounce
        self.ack_interval = ack_interval
        self.now = now
        self._view = view
        self._before_first_publish = before_first_publish
        self._dirty = asyncio.Event()
        self._semaphore = asyncio.Semaphore(status_concurrency)
        self._fingerprints: dict[tuple[str, Key], Any] = {}
        self._secret_cache: dict[Key, tuple[str, Secret]] = {}
        self._written: dict[tuple[str, Key], tuple[str, str, Mapping[str, Any], float]] = {}
        self._persisted: str | None = None
        self._secret_known = False
        self._acks_written: dict[str, str] | None = None
        self.reconciled: dict[tuple[str, Key], ReconcileResult] = {}
        self.referenced_secrets: frozenset[Key] = frozenset()
        self.published: str | None = None
        self.snapshot: Snapshot | None = None
        self.stats = Stats()
        self.passed = asyncio.Event()
        """Set after every completed pass (tests and benchmarks wait on it)."""

    def attach(self, view: Callable[[], View]) -> None:
        self._view = view

    # -- inputs -------------------------------------------------------------------------------

    def poke(self) -> None:
        self._dirty.set()

    def notice(self, kind: str, key: Key, fingerprint: Any | None) -> None:
        """An object of ``kind`` changed (``fingerprint`` None: it is gone). Pokes only when
        something the pass reads changed, so our own status writes cause no extra passes."""
        slot = (kind, key)
        if fingerprint is None:
            if self._fingerprints.pop(slot, None) is not None or kind != "Secret":
                self.poke()
            return
        if self._fingerprints.get(slot) != fingerprint:
            self._fingerprints[slot] = fingerprint
            self.poke()

    def notice_secret(self, entry: SecretEntry, deleted: bool) -> None:
        """A Secret changed; only API-key Secrets and ones a backend references matter."""
        if (entry.namespace, entry.name) == (self.namespace, SNAPSHOT_SECRET):
            return
        relevant = (
            entry.api_key
            or entry.key in self.referenced_secrets
            or ("Secret", entry.key) in self._fingerprints
        )
        if relevant:
            self.notice("Secret", entry.key, None if deleted else entry.fingerprint)

    def record(self, kind: str, key: Key, result: ReconcileResult) -> None:
        """The outcome of reconciling an object's children, for its status."""
        if self.reconciled.get((kind, key)) != result:
            self.reconciled[(kind, key)] = result
            self.poke()

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: wait for a poke, debounce, run a pass."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.ack_interval)
            except TimeoutError:
                await self._write_acks()
                continue
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("sync pass failed; retrying in 2s")
                asyncio.get_running_loop().call_later(2.0, self.poke)

    async def run_pass(self) -> Snapshot:
        if self._view is None:
            raise RuntimeError("Sync has no view attached")
        started = time.perf_counter()
        view = self._view()
        backends = {k: e for k, e in view.backends.items() if not e.deleting}
        routes = {k: e for k, e in view.routes.items() if not e.deleting}

        secrets = await self._secrets(backends, view.secrets)
        compile_started = time.perf_counter()
        snapshot = await asyncio.to_thread(
            compile_snapshot,
            [e.model for e in backends.values() if e.model is not None],
            [e.model for e in routes.values() if e.model is not None],
            secrets,
        )
        self.stats.last_compile_seconds = time.perf_counter() - compile_started
        self.snapshot = snapshot

        if snapshot.version != self.published:
            if self._before_first_publish is not None:
                await self._before_first_publish()
                self._before_first_publish = None
            self.publisher.publish(snapshot)
            self.published = snapshot.version
            self.stats.versions += 1
            logger.info(
                "routing snapshot %s: %d backends, %d routes, %d left out",
                snapshot.version,
                len(snapshot.backends),
                len(snapshot.routes),
                len(snapshot.problems),
            )
        if snapshot.version != self._persisted:
            try:
                await self._persist(snapshot)
            except KubeError as err:
                logger.error("persisting snapshot %s failed: %s", snapshot.version, err)
                asyncio.get_running_loop().call_later(5.0, self.poke)

        await self._write_statuses(view, backends, routes, snapshot)
        # a fresh view: a result recorded during this pass belongs to an object indexed
        # after the pass began (kopf indexes an object before running its handlers)
        self._prune(self._view())
        self.stats.passes += 1
        self.stats.last_pass_seconds = time.perf_counter() - started
        self.passed.set()
        return snapshot

    # -- secrets ------------------------------------------------------------------------------

    async def _secrets(
        self, backends: Mapping[Key, BackendEntry], index: Mapping[Key, SecretEntry]
    ) -> list[Secret]:
        referenced = {
            (entry.namespace, entry.model.spec.credentials.secret_ref.name)
            for entry in backends.values()
            if entry.model is not None and entry.model.spec.credentials is not None
        }
        self.referenced_secrets = frozenset(referenced)
        for key in list(self._secret_cache):
            if key not in referenced:
                del self._secret_cache[key]

        async def fetch(key: Key, entry: SecretEntry) -> None:
            cached = self._secret_cache.get(key)
            if cached is not None and cached[0] == entry.resource_version:
                return
            async with self._semaphore:
                body = await self.api.get_secret(*key)
            self.stats.secret_reads += 1
            if body is None:
                self._secret_cache.pop(key, None)
                return
            rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
            self._secret_cache[key] = (rv, secret_from_body(body))

        await asyncio.gather(
            *(fetch(key, index[key]) for key in sorted(referenced) if key in index)
        )
        out = [s for e in index.values() if (s := e.as_api_key_secret()) is not None]
        # last: full Secrets win over the key-only view of the same Secret
        out += [
            self._secret_cache[k][1]
            for k in sorted(referenced)
            if k in index and k in self._secret_cache
        ]
        return out

    # -- persistence --------------------------------------------------------------------------

    async def _persist(self, snapshot: Snapshot) -> None:
        """Keep the snapshot in a Secret, not a ConfigMap: it carries upstream credentials."""
        if not self._secret_known:
            current = await self.api.get_secret(self.namespace, SNAPSHOT_SECRET)
            self._secret_known = current is not None
            if current is not None:
                annotations = (current.get("metadata") or {}).get("annotations") or {}
                self._persisted = annotations.get(VERSION_ANNOTATION)
                if self._persisted == snapshot.version:
                    return
        data = base64.b64encode(await asyncio.to_thread(encode, snapshot)).decode()
        annotations = {VERSION_ANNOTATION: snapshot.version}
        if not self._secret_known:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": SNAPSHOT_SECRET,
                    "namespace": self.namespace,
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                    "annotations": annotations,
                },
                "data": {SNAPSHOT_KEY: data},
            }
            try:
                await self.api.create_secret(self.namespace, body)
            except Conflict:
                self._secret_known = True
                await self._persist(snapshot)
                return
            self._secret_known = True
        else:
            patched = await self.api.patch_secret(
                self.namespace,
                SNAPSHOT_SECRET,
                {"metadata": {"annotations": annotations}, "data": {SNAPSHOT_KEY: data}},
            )
            if patched is None:  # deleted meanwhile: create it again
                self._secret_known = False
                await self._persist(snapshot)
                return
        self._persisted = snapshot.version
        self.stats.persists += 1
        logger.info(
            "persisted snapshot %s in Secret %s/%s",
            snapshot.version,
            self.namespace,
            SNAPSHOT_SECRET,
        )

    async def _write_acks(self) -> None:
        """Show which gateway runs which version, on the snapshot Secret."""
        acks = self.publisher.acks()
        if acks == (self._acks_written or {}) or not self._secret_known:
            return
        try:
            await self.api.patch_secret(
                self.namespace,
                SNAPSHOT_SECRET,
                {"metadata": {"annotations": {ACKS_ANNOTATION: json.dumps(acks, sort_keys=True)}}},
            )
        except KubeError as err:
            logger.warning("writing gateway acks failed: %s", err)
            return
        self._acks_written = acks

    # -- statuses -----------------------------------------------------------------------------

    def _fresh(self, kind: str, entry: Any) -> Any:
        """The entry, with the status we wrote ourselves if the index has not caught up."""
        written = self._written.get((kind, entry.key))
        if written is None:
            return entry
        uid, rv, status, at = written
        if (
            uid != entry.uid
            or rv == entry.resource_version
            or time.monotonic() - at > WRITTEN_GRACE
        ):
            self._written.pop((kind, entry.key), None)
            return entry
        return dataclasses.replace(entry, status={**entry.status, **status})

    async def _write_statuses(
        self,
        view: View,
        backends: Mapping[Key, BackendEntry],
        routes: Mapping[Key, RouteEntry],
        snapshot: Snapshot,
    ) -> None:
        backend_problems = {p.id: p for p in snapshot.problems if p.kind == MODEL_BACKEND.kind}
        route_problems = {p.id: p for p in snapshot.problems if p.kind == LLM_ROUTE.kind}
        now = self.now()
        writes: list[tuple[str, Any, dict[str, Any]]] = []
        ready: dict[Key, bool] = {}
        for key, raw_entry in backends.items():
            entry = self._fresh(MODEL_BACKEND.kind, raw_entry)
            desired = backend_status(
                entry,
                snapshot=snapshot,
                problems=backend_problems,
                service=view.services.get(key),
                reconciled=self.reconciled.get((MODEL_BACKEND.kind, key)),
                now=now,
            )
            ready[key] = is_ready(desired)
            if differs(entry.status, desired):
                writes.append((MODEL_BACKEND.kind, entry, desired))
        for key, raw_route in routes.items():
            route = self._fresh(LLM_ROUTE.kind, raw_route)
            desired = route_status(
                route,
                snapshot=snapshot,
                problems=route_problems,
                backend_ready=ready,
                function=view.services.get((key[0], function_service_name(key[1]))),
                reconciled=self.reconciled.get((LLM_ROUTE.kind, key)),
                now=now,
            )
            if differs(route.status, desired):
                writes.append((LLM_ROUTE.kind, route, desired))
        if writes:
            await asyncio.gather(*(self._write(kind, e, s) for kind, e, s in writes))

    async def _write(self, kind: str, entry: Any, status: dict[str, Any]) -> None:
        plural = MODEL_BACKEND.plural if kind == MODEL_BACKEND.kind else LLM_ROUTE.plural
        try:
            async with self._semaphore:
                patched = await self.api.patch_status(plural, entry.namespace, entry.name, status)
        except KubeError as err:
            logger.warning("status of %s %s/%s: %s", kind, entry.namespace, entry.name, err)
            asyncio.get_running_loop().call_later(2.0, self.poke)
            return
        self.stats.status_writes += 1
        if patched is not None:
            meta = patched.get("metadata") or {}
            self._written[(kind, entry.key)] = (
                str(meta.get("uid") or ""),
                str(meta.get("resourceVersion") or ""),
                status,
                time.monotonic(),
            )

    def _prune(self, view: View) -> None:
        alive = {(MODEL_BACKEND.kind, k) for k in view.backends} | {
            (LLM_ROUTE.kind, k) for k in view.routes
        }
        for slot in [s for s in self.reconciled if s not in alive]:
            del self.reconciled[slot]
        for slot in [s for s in self._written if s not in alive]:
            del self._written[slot]
