"""kanal's API: typed models of the ModelBackend and LlmRoute custom resources.

This package is the single source of the CRDs. It imports nothing else of kanal's.
"""

from kanal.api._base import Duration, KanalModel, Rule, parse_duration
from kanal.api._crd import API_VERSION, GROUP, VERSION, ResourceKind, structural_schema
from kanal.api.core import API_KEY_LABEL, Namespace, Secret
from kanal.api.llmroute import LlmRouteSpec, LlmRouteStatus
from kanal.api.modelbackend import ModelBackendSpec, ModelBackendStatus
from kanal.api.resources import (
    KINDS,
    LLM_ROUTE,
    MODEL_BACKEND,
    RESOURCE_MODELS,
    LlmRoute,
    ModelBackend,
)

__all__ = [
    "API_KEY_LABEL",
    "API_VERSION",
    "GROUP",
    "KINDS",
    "LLM_ROUTE",
    "MODEL_BACKEND",
    "RESOURCE_MODELS",
    "VERSION",
    "Duration",
    "KanalModel",
    "LlmRoute",
    "LlmRouteSpec",
    "LlmRouteStatus",
    "ModelBackend",
    "ModelBackendSpec",
    "ModelBackendStatus",
    "Namespace",
    "ResourceKind",
    "Rule",
    "Secret",
    "parse_duration",
    "structural_schema",
]
