"""What the operator remembers of each watched object, parsed once per event (pure).

Entries are small and immutable. A ModelBackend or LlmRoute whose spec does not parse is
still remembered (with the error), so its status can say why it is left out. Of Secrets only
a fingerprint is kept, plus the key of API-key Secrets: upstream credentials are read when a
backend needs them (see ``sync``), so the operator holds no Secret it does not use.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kanal.api import API_KEY_LABEL, API_VERSION, LlmRoute, ModelBackend, Secret
from kanal.controller.builders import MANAGED_BY, MANAGED_BY_LABEL, controller_uid

Key = tuple[str, str]
"""(namespace, name)."""


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = body.get("metadata") or {}
    return meta


def key_of(body: Mapping[str, Any]) -> Key:
    meta = _meta(body)
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts)


def _model_meta(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    out: dict[str, Any] = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    if meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    if meta.get("generation") is not None:
        out["generation"] = meta["generation"]
    return out


@dataclass(frozen=True)
class ObjectEntry:
    """A ModelBackend or LlmRoute as last seen."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    status: Mapping[str, Any]
    """The status as stored (what the status writer compares against)."""
    error: str | None = None
    """Why the spec does not parse; then ``model`` is None."""
    deleting: bool = False

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class BackendEntry(ObjectEntry):
    model: ModelBackend | None = None

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """What the compiler reads of it: changes here need a new snapshot."""
        return (self.uid, self.generation, self.status.get("url"), self.error)


@dataclass(frozen=True)
class RouteEntry(ObjectEntry):
    model: LlmRoute | None = None

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        return (self.uid, self.generation, self.error)


def _common(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    namespace, name = key_of(body)
    return {
        "namespace": namespace,
        "name": name,
        "uid": str(meta.get("uid") or ""),
        "generation": meta.get("generation"),
        "resource_version": str(meta.get("resourceVersion") or ""),
        "status": dict(body.get("status") or {}),
        "deleting": meta.get("deletionTimestamp") is not None,
    }


def parse_backend(body: Mapping[str, Any]) -> BackendEntry:
    common = _common(body)
    status = common["status"]
    url = status.get("url")
    raw = {
        "apiVersion": API_VERSION,
        "kind": "ModelBackend",
        "metadata": _model_meta(body),
        "spec": body.get("spec") or {},
        # the compiler reads status.url (the Knative Service's URL once known)
        **({"status": {"url": url}} if isinstance(url, str) else {}),
    }
    try:
        model = ModelBackend.model_validate(raw)
    except ValidationError as err:
        return BackendEntry(**common, error=_validation_message(err))
    return BackendEntry(**common, model=model)


def parse_route(body: Mapping[str, Any]) -> RouteEntry:
    common = _common(body)
    raw = {
        "apiVersion": API_VERSION,
        "kind": "LlmRoute",
        "metadata": _model_meta(body),
        "spec": body.get("spec") or {},
    }
    try:
        model = LlmRoute.model_validate(raw)
    except ValidationError as err:
        return RouteEntry(**common, error=_validation_message(err))
    return RouteEntry(**common, model=model)


@dataclass(frozen=True)
class SecretEntry:
    """A Secret's fingerprint; the value of ``data.key`` only for API-key Secrets."""

    namespace: str
    name: str
    resource_version: str
    api_key: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    key_b64: str | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        return (self.resource_version,)

    def as_api_key_secret(self) -> Secret | None:
        """The Secret as the compiler reads API keys, or None if it is not one."""
        if not self.api_key or self.key_b64 is None:
            return None
        return Secret.model_validate(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": dict(self.labels),
                },
                "data": {"key": self.key_b64},
            }
        )


def parse_secret(body: Mapping[str, Any]) -> SecretEntry:
    meta = _meta(body)
    namespace, name = key_of(body)
    labels = dict(meta.get("labels") or {})
    api_key = labels.get(API_KEY_LABEL) == "true"
    key_b64 = None
    if api_key:
        raw = (body.get("data") or {}).get("key")
        if isinstance(raw, str):
            try:
                base64.b64decode(raw, validate=True)
                key_b64 = raw
            except (binascii.Error, ValueError):
                key_b64 = None
    return SecretEntry(
        namespace=namespace,
        name=name,
        resource_version=str(meta.get("resourceVersion") or ""),
        api_key=api_key,
        labels=labels if api_key else {},
        key_b64=key_b64,
    )


def secret_from_body(body: Mapping[str, Any]) -> Secret:
    """A Secret read from the API (data base64) as the compiler reads it."""
    meta = _meta(body)
    return Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "data": dict(body.get("data") or {}),
        }
    )


@dataclass(frozen=True)
class ServiceEntry:
    """A Knative Service managed by kanal: identity, owner, owned fields and status."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    owner_uid: str | None
    body: Mapping[str, Any]
    """Trimmed to metadata (name, namespace, uid, generation, labels, ownerReferences),
    spec and status: enough for readiness and the owned-field comparison."""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        status = self.body.get("status") or {}
        return (
            self.uid,
            self.generation,
            status.get("observedGeneration"),
            status.get("url"),
            repr(status.get("conditions")),
        )


def is_managed(body: Mapping[str, Any]) -> bool:
    return (_meta(body).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def parse_service(body: Mapping[str, Any]) -> ServiceEntry:
    meta = _meta(body)
    namespace, name = key_of(body)
    trimmed = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "labels", "ownerReferences")
            if k in meta
        },
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }
    return ServiceEntry(
        namespace=namespace,
        name=name,
        uid=str(meta.get("uid") or ""),
        generation=meta.get("generation"),
        owner_uid=controller_uid(body),
        body=trimmed,
    )


# -- snapshots of the index -------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """Everything the sync pass reads, at one moment."""

    backends: Mapping[Key, BackendEntry]
    routes: Mapping[Key, RouteEntry]
    secrets: Mapping[Key, SecretEntry]
    services: Mapping[Key, ServiceEntry]


def latest(entries: Iterable[Any]) -> dict[Key, Any]:
    """Entries by key; the last one wins (at most one object per key lives at a time)."""
    return {entry.key: entry for entry in entries}
