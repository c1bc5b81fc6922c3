"""Types shared by both resources: references, conditions, object metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from kanal.api._base import DNS_SUBDOMAIN, KanalModel


class ObjectMeta(KanalModel):
    """The part of Kubernetes object metadata kanal reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Object name."""
    namespace: str | None = Field(default=None, max_length=63)
    """Namespace (the tenant); ``default`` when absent."""
    labels: dict[str, str] | None = None
    """Labels."""
    annotations: dict[str, str] | None = None
    """Annotations."""
    generation: int | None = None
    """Generation the API server assigned to this spec."""


class SecretKeyRef(KanalModel):
    """A key of a Secret in the object's own namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key inside the Secret's data."""


class BackendRef(KanalModel):
    """A reference to a ModelBackend."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the ModelBackend."""
    namespace: str | None = Field(default=None, max_length=63)
    """Namespace of the ModelBackend; defaults to the route's own namespace."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KanalModel):
    """One observation of the object's state, in the usual Kubernetes shape."""

    type: str = Field(max_length=316)
    """Condition type, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str | None = Field(default=None, max_length=1024)
    """Machine-readable CamelCase reason for the last transition."""
    message: str | None = Field(default=None, max_length=32768)
    """Human-readable explanation, saying what to do about it where there is something to do."""
    last_transition_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}
    )
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was computed from."""


CONDITIONS_LIST: JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""Schema extras that make a conditions list a map keyed by type, as in core types."""
