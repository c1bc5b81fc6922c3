"""Whole objects (apiVersion, kind, metadata, spec, status) and the CRD of each kind."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kanal.api._base import KanalModel
from kanal.api._crd import AGE_COLUMN, API_VERSION, READY_COLUMNS, PrinterColumn, ResourceKind
from kanal.api.common import ObjectMeta
from kanal.api.llmroute import LlmRouteSpec, LlmRouteStatus
from kanal.api.modelbackend import ModelBackendSpec, ModelBackendStatus


class ModelBackend(KanalModel):
    """Where a model lives (a hosted provider or an in-cluster model) and how to reach it."""

    api_version: Literal["kanal.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelBackend"]
    metadata: ObjectMeta
    spec: ModelBackendSpec
    status: ModelBackendStatus | None = None


class LlmRoute(KanalModel):
    """The model name callers ask for, the backends that serve it and the policy applied to it."""

    api_version: Literal["kanal.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LlmRoute"]
    metadata: ObjectMeta
    spec: LlmRouteSpec
    status: LlmRouteStatus | None = None


MODEL_BACKEND = ResourceKind(
    kind="ModelBackend",
    plural="modelbackends",
    short_names=("mb",),
    description=ModelBackend.__doc__ or "",
    spec=ModelBackendSpec,
    status=ModelBackendStatus,
    columns=(
        PrinterColumn("Provider", ".spec.provider", description="API the upstream speaks"),
        PrinterColumn("URL", ".status.url", description="Resolved endpoint"),
        *READY_COLUMNS,
        AGE_COLUMN,
    ),
)

LLM_ROUTE = ResourceKind(
    kind="LlmRoute",
    plural="llmroutes",
    short_names=("lr",),
    description=LlmRoute.__doc__ or "",
    spec=LlmRouteSpec,
    status=LlmRouteStatus,
    columns=(
        PrinterColumn("Model", ".spec.model", description="Public model name callers send"),
        *READY_COLUMNS,
        PrinterColumn(
            "Function", ".status.functionUrl", description="Prompt function URL", priority=1
        ),
        AGE_COLUMN,
    ),
)

KINDS: tuple[ResourceKind, ...] = (MODEL_BACKEND, LLM_ROUTE)
RESOURCE_MODELS: dict[str, type[ModelBackend] | type[LlmRoute]] = {
    "ModelBackend": ModelBackend,
    "LlmRoute": LlmRoute,
}
__all__ = ["API_VERSION", "KINDS", "LLM_ROUTE", "MODEL_BACKEND", "RESOURCE_MODELS"]
