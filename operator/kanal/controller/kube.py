"""The few Kubernetes API calls the operator makes itself (kopf does the watching).

The official client is synchronous; each call runs in a worker thread so the event loop
(kopf's watchers, the sync loop, the gRPC server) never blocks on the network.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from kanal.api import GROUP, VERSION
from kanal.controller.builders import KNATIVE_GROUP, KNATIVE_PLURAL, KNATIVE_VERSION

T = TypeVar("T")

TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every call."""
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


class KubeError(Exception):
    """An API call failed with an HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class Conflict(KubeError):
    """409: the object exists already, or was changed meanwhile."""


def _error(err: k8s.ApiException) -> KubeError:
    status = int(err.status or 0)
    message = str(err.reason or "")
    try:
        body = json.loads(err.body or "")
        message = str(body.get("message") or message)
    except (ValueError, AttributeError):
        pass
    return (Conflict if status == 409 else KubeError)(status, message)


def api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """An ApiClient from in-cluster config (a pod's ServiceAccount) or a kubeconfig file
    ($KUBECONFIG or ~/.kube/config); never touches the client's global default."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return k8s.ApiClient(configuration)
    client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, persist_config=False
    )
    return client


def own_namespace(default: str = "default") -> str:
    """The namespace the operator runs in: $KANAL_NAMESPACE, else its pod's, else ``default``."""
    if env := os.environ.get("KANAL_NAMESPACE"):
        return env
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


class Kube:
    """Async wrappers for the operator's own API calls."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", TIMEOUT)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except k8s.ApiException as err:
            raise _error(err) from None

    async def _maybe(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return await self._call(fn, *args, **kwargs)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    # -- Knative Services ---------------------------------------------------------------------

    async def knative_installed(self) -> bool:
        """Whether the API server serves serving.knative.dev/v1 services."""
        found = await self._maybe(self.custom.get_api_resources, KNATIVE_GROUP, KNATIVE_VERSION)
        if found is None:
            return False
        resources = _plain(self.api, found).get("resources") or []
        return any(r.get("name") == KNATIVE_PLURAL for r in resources)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._maybe(
            self.custom.get_namespaced_custom_object,
            KNATIVE_GROUP,
            KNATIVE_VERSION,
            namespace,
            KNATIVE_PLURAL,
            name,
        )
        return _as_dict(found)

    async def create_service(self, body: Mapping[str, Any]) -> dict[str, Any]:
        created = await self._call(
            self.custom.create_namespaced_custom_object,
            KNATIVE_GROUP,
            KNATIVE_VERSION,
            body["metadata"]["namespace"],
            KNATIVE_PLURAL,
            dict(body),
            field_manager="kanal",
        )
        return _as_dict(created) or {}

    async def patch_service(
        self, namespace: str, name: str, ops: list[dict[str, Any]], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Apply a JSON Patch; with ``dry_run`` the server runs admission (Knative's
        defaulting webhook included) and returns the result without storing it."""
        patched = await self._call(
            self.custom.patch_namespaced_custom_object,
            KNATIVE_GROUP,
            KNATIVE_VERSION,
            namespace,
            KNATIVE_PLURAL,
            name,
            ops,
            dry_run="All" if dry_run else None,
            field_manager="kanal",
            _content_type="application/json-patch+json",
        )
        return _as_dict(patched) or {}

    async def delete_service(self, namespace: str, name: str, uid: str) -> None:
        """Delete that very object (uid precondition); gone already is fine."""
        await self._maybe(
            self.custom.delete_namespaced_custom_object,
            KNATIVE_GROUP,
            KNATIVE_VERSION,
            namespace,
            KNATIVE_PLURAL,
            name,
            body={"preconditions": {"uid": uid}},
        )

    # -- kanal objects ------------------------------------------------------------------------

    async def get_kanal(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._maybe(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return _as_dict(found)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource; None if the object is gone."""
        patched = await self._maybe(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": dict(status)},
            field_manager="kanal",
            _content_type="application/merge-patch+json",
        )
        return _as_dict(patched)

    # -- Secrets ------------------------------------------------------------------------------

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._maybe(self.core.read_namespaced_secret, name, namespace)
        return _plain(self.api, found) if found is not None else None

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created = await self._call(
            self.core.create_namespaced_secret, namespace, dict(body), field_manager="kanal"
        )
        result: dict[str, Any] = _plain(self.api, created)
        return result

    async def patch_secret(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        patched = await self._maybe(
            self.core.patch_namespaced_secret,
            name,
            namespace,
            dict(patch),
            field_manager="kanal",
            _content_type="application/merge-patch+json",
        )
        return _plain(self.api, patched) if patched is not None else None

    # -- kopf peering -------------------------------------------------------------------------

    async def ensure_peering(self, name: str, namespaces: Iterable[str] | None) -> None:
        """Create kopf's peering object(s) if missing: a ClusterKopfPeering when
        ``namespaces`` is None (cluster-wide operator), else a KopfPeering per namespace."""
        body: dict[str, Any] = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}"}
        try:
            if namespaces is None:
                body |= {"kind": "ClusterKopfPeering", "metadata": {"name": name}}
                await self._call(
                    self.custom.create_cluster_custom_object,
                    PEERING_GROUP,
                    PEERING_VERSION,
                    "clusterkopfpeerings",
                    body,
                )
                return
            for namespace in namespaces:
                item = body | {"kind": "KopfPeering", "metadata": {"name": name}}
                try:
                    await self._call(
                        self.custom.create_namespaced_custom_object,
                        PEERING_GROUP,
                        PEERING_VERSION,
                        namespace,
                        "kopfpeerings",
                        item,
                    )
                except Conflict:
                    continue
        except Conflict:
            return


def _plain(api: k8s.ApiClient, obj: object) -> Any:
    """A client model as plain JSON types (camelCase keys)."""
    return api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def _as_dict(obj: object) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"expected a JSON object from the API, got {type(obj).__name__}")
