"""Shared bits of the controller unit tests: objects as the API server would hand them over."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kanal.api import LlmRoute, ModelBackend

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NS = "team-a"


def example(kind: str, name: str) -> dict[str, Any]:
    """An object of examples/, as stored (namespace, uid, generation set)."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return stored(doc)
    raise KeyError(f"{kind} {name} not in examples/")


def stored(doc: dict[str, Any], *, generation: int = 1, uid: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(doc)
    meta = body["metadata"]
    meta.setdefault("namespace", NS)
    meta.setdefault("uid", uid or f"uid-{meta['name']}")
    meta.setdefault("generation", generation)
    meta.setdefault("resourceVersion", "1")
    return body


def backend_model(body: dict[str, Any]) -> ModelBackend:
    return ModelBackend.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {k: body["metadata"][k] for k in ("name", "namespace", "generation")}}
    )


def route_model(body: dict[str, Any]) -> LlmRoute:
    return LlmRoute.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {k: body["metadata"][k] for k in ("name", "namespace", "generation")}}
    )


def mock_backend(name: str = "mock", **spec: Any) -> dict[str, Any]:
    return stored(
        {
            "apiVersion": "kanal.dev/v1alpha1",
            "kind": "ModelBackend",
            "metadata": {"name": name},
            "spec": {"provider": "mock", "models": [{"name": "m", "contextWindow": 100}], **spec},
        }
    )


def served_backend(name: str = "llm", **serving: Any) -> dict[str, Any]:
    return mock_backend(
        name,
        provider="openai-compatible",
        serving={"image": "example.test/model:1", **serving},
    )


def route_body(name: str, *backends: tuple[str, str], **spec: Any) -> dict[str, Any]:
    return stored(
        {
            "apiVersion": "kanal.dev/v1alpha1",
            "kind": "LlmRoute",
            "metadata": {"name": name},
            "spec": {
                "backends": [{"backendRef": {"name": b}, "model": m} for b, m in backends],
                **spec,
            },
        }
    )


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A small RFC 6902 applier (add/remove/replace on objects) for checking our patches."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = out
        for part in parts[:-1]:
            parent = parent[part]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[last]
        else:
            raise ValueError(op)
    return out


def knative_status(
    ksvc: dict[str, Any], *, ready: str = "True", observed: int | None = None, **extra: Any
) -> dict[str, Any]:
    """``ksvc`` with the status Knative's controller would write."""
    out = copy.deepcopy(ksvc)
    out["metadata"].setdefault("generation", 1)
    out["metadata"].setdefault("uid", "ksvc-uid")
    out["status"] = {
        "observedGeneration": out["metadata"]["generation"] if observed is None else observed,
        "url": f"http://{out['metadata']['name']}.{out['metadata']['namespace']}.svc.cluster.local",
        "conditions": [{"type": "Ready", "status": ready, **extra}],
    }
    return out
