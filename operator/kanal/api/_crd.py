"""Turns the pydantic API models into CustomResourceDefinitions.

pydantic emits JSON Schema 2020-12 with ``$ref``/``$defs`` and ``anyOf [X, null]`` for
optional fields; Kubernetes wants a *structural* OpenAPI v3 schema: everything inlined,
no nullable unions, a type on every node. :func:`structural_schema` does that rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kanal.api._base import KanalModel

GROUP = "kanal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Keys of pydantic's output that are either JSON-Schema-only or noise in a CRD.
_DROP = {"title", "$defs", "examples"}
_KEEP_AS_IS = {
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "required",
    "example",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-map-type",
}


def structural_schema(model: type[KanalModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model``, ready for a CRD version."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _rewrite(raw, raw.get("$defs", {}))


def _rewrite(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:  # inline the definition; the field's own keys win (its description)
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {branches}")
        inner = _rewrite(branches[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if value is not None and not isinstance(value, bool):
            # JSON Schema 2020 gives the number; OpenAPI v3.0 wants the limit plus a boolean
            node[limit] = value
            node[bound] = True

    out: dict[str, Any] = {}
    for key in ("description", "type"):
        if key in node:
            out[key] = node[key]
    for key, value in node.items():
        if key in _DROP or key in out:
            continue
        if key == "properties":
            out[key] = {name: _rewrite(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _rewrite(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, Mapping):  # a map type; ``false`` is implied by properties
                out[key] = _rewrite(value, defs)
        elif key == "anyOf":  # int-or-string keeps its two bare branches
            out[key] = [dict(branch) for branch in value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") or key in _KEEP_AS_IS:
            out[key] = value
        else:
            raise ValueError(f"schema keyword {key!r} has no CRD equivalent (in {node})")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise ValueError(f"schema node without a type: {node}")
    return out


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def as_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


READY_COLUMNS = (
    PrinterColumn(
        "Ready",
        '.status.conditions[?(@.type=="Ready")].status',
        description="Whether the resource is serving",
    ),
    PrinterColumn(
        "Reason",
        '.status.conditions[?(@.type=="Ready")].reason',
        description="Why it is or is not Ready",
    ),
)
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class ResourceKind:
    """Everything the CRD of one kind needs besides its schema's models."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[KanalModel]
    status: type[KanalModel]
    columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("kanal",)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def crd(self) -> dict[str, Any]:
        """The CustomResourceDefinition manifest for this kind."""
        schema = {
            "type": "object",
            "description": self.description,
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string", "description": "kanal.dev/v1alpha1"},
                "kind": {"type": "string", "description": self.kind},
                "metadata": {"type": "object"},
                "spec": structural_schema(self.spec),
                "status": structural_schema(self.status),
            },
        }
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.crd_name,
                "labels": {"app.kubernetes.io/part-of": "kanal"},
            },
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.kind.lower(),
                    "shortNames": list(self.short_names),
                    "categories": list(self.categories),
                },
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [c.as_crd() for c in self.columns],
                        "schema": {"openAPIV3Schema": schema},
                    }
                ],
            },
        }
