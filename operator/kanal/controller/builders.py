"""Pure builders: a ModelBackend or LlmRoute in, its Knative Service manifest out.

Same input, same manifest: names are fixed (a backend's Service has the backend's name, a
prompt function's Service is ``<route>-prompt``), so handlers are idempotent and a restarted
operator finds what it created. Nothing here talks to Kubernetes.

Updates compare only the fields kanal owns (:func:`owned_fields`: the revision template,
kanal's labels and the traffic block). Everything else on the Service (Knative's defaults,
other controllers' annotations, status) is left alone, so defaulting never causes an update
loop (knative/serving#2767).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kanal
from kanal.api import API_VERSION, LlmRoute, ModelBackend
from kanal.api.llmroute import Prompt
from kanal.api.modelbackend import Serving
from kanal.controller.conditions import find

KNATIVE_GROUP = "serving.knative.dev"
KNATIVE_VERSION = "v1"
KNATIVE_PLURAL = "services"
KNATIVE_API_VERSION = f"{KNATIVE_GROUP}/{KNATIVE_VERSION}"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kanal"
BACKEND_LABEL = "kanal.dev/backend"
ROUTE_LABEL = "kanal.dev/route"
VISIBILITY_LABEL = "networking.knative.dev/visibility"
CLUSTER_LOCAL = "cluster-local"
MANAGED_LABELS = (MANAGED_BY_LABEL, BACKEND_LABEL, ROUTE_LABEL, VISIBILITY_LABEL)
"""The label keys kanal owns on a Knative Service; other labels are someone else's."""

AUTOSCALING = "autoscaling.knative.dev/"
MIN_SCALE = AUTOSCALING + "min-scale"
MAX_SCALE = AUTOSCALING + "max-scale"
TARGET = AUTOSCALING + "target"
METRIC = AUTOSCALING + "metric"
INITIAL_SCALE = AUTOSCALING + "initial-scale"
SCALE_DOWN_DELAY = AUTOSCALING + "scale-down-delay"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"

MODEL_CONTAINER = "model"
FUNCTION_CONTAINER = "function"
FUNCTION_SUFFIX = "-prompt"
FUNCTION_PORT = 8080

DEFAULT_PROMPT_FUNCTION_IMAGE = f"ghcr.io/kanal-dev/kanal-prompt:{kanal.__version__}"
DEFAULT_GATEWAY_GRPC = "kanal-gateway.kanal.svc.cluster.local:9090"

# A Knative Service name becomes a Kubernetes Service name: a DNS-1035 label.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class BuildSettings:
    """Operator-wide choices that go into the children's specs."""

    prompt_function_image: str = DEFAULT_PROMPT_FUNCTION_IMAGE
    """Image of the prompt function (functions/prompt)."""
    gateway_grpc: str = DEFAULT_GATEWAY_GRPC
    """host:port of the gateway's gRPC API, handed to prompt functions."""
    progress_deadline: str = "30m"
    """How long Knative waits for a revision to become ready; model pulls are slow
    (Knative's default is 10 minutes)."""
    default_timeout_seconds: int = 600
    """timeoutSeconds when a backend sets none: Knative's default (300) cuts long
    generations; 600 is the highest value a default Knative install accepts."""


class InvalidChild(ValueError):
    """The resource cannot be turned into a valid child (e.g. its name cannot be a Service's)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_service_name(name: str, what: str) -> None:
    """Raise :class:`InvalidChild` unless ``name`` can name a Knative Service."""
    if len(name) > 63 or not _DNS_1035.match(name):
        raise InvalidChild(
            "InvalidName",
            f"{what} needs a Knative Service named {name!r}, which is not a valid name: "
            "at most 63 characters, lower-case letters, digits and '-', starting with a "
            "letter (rename the resource)",
        )


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """A controller owner reference: the garbage collector deletes the child with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def function_service_name(route_name: str) -> str:
    return route_name + FUNCTION_SUFFIX


def function_prompt(route: LlmRoute) -> Prompt | None:
    """The route's prompt if it is published as a function (``prompt.expose.function``)."""
    prompt = route.spec.prompt
    return prompt if prompt is not None and prompt.published else None


def _namespace(obj: ModelBackend | LlmRoute) -> str:
    return obj.metadata.namespace or "default"


def _quantities(values: Mapping[str, int | str] | None) -> dict[str, str] | None:
    return {k: str(v) for k, v in values.items()} if values else None


def _scale_annotations(serving: Serving) -> dict[str, str]:
    scale = serving.scale
    if scale is None:
        return {}
    annotations = {MIN_SCALE: str(scale.min), METRIC: scale.metric}
    if scale.max is not None:
        annotations[MAX_SCALE] = str(scale.max)
    if scale.target is not None:
        annotations[TARGET] = str(scale.target)
    if scale.initial is not None:
        annotations[INITIAL_SCALE] = str(scale.initial)
    if scale.scale_down_delay is not None:
        annotations[SCALE_DOWN_DELAY] = scale.scale_down_delay
    return annotations


def _traffic(serving: Serving) -> list[dict[str, Any]]:
    if not serving.traffic:
        # Spelled out rather than left to Knative's defaulting: nothing for it to add.
        return [{"latestRevision": True, "percent": 100}]
    out = []
    for target in serving.traffic:
        entry: dict[str, Any] = {}
        if target.revision_name is not None:
            entry["revisionName"] = target.revision_name
            entry["latestRevision"] = False
        else:
            entry["latestRevision"] = True
        entry["percent"] = target.percent
        if target.tag is not None:
            entry["tag"] = target.tag
        out.append(entry)
    return out


def _model_container(serving: Serving) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": MODEL_CONTAINER,
        "image": serving.image,
        "ports": [{"name": "http1", "containerPort": serving.port}],
    }
    if serving.args:
        container["args"] = list(serving.args)
    if serving.env:
        env: list[dict[str, Any]] = []
        for var in serving.env:
            if var.value_from is not None:
                ref = var.value_from.secret_key_ref
                env.append(
                    {
                        "name": var.name,
                        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                    }
                )
            else:
                env.append({"name": var.name, "value": var.value})
        container["env"] = env
    if serving.resources is not None:
        resources = {
            key: value
            for key, value in (
                ("limits", _quantities(serving.resources.limits)),
                ("requests", _quantities(serving.resources.requests)),
            )
            if value
        }
        if resources:
            container["resources"] = resources
    return container


def backend_service(
    backend: ModelBackend, uid: str, settings: BuildSettings | None = None
) -> dict[str, Any] | None:
    """The Knative Service that runs ``backend.spec.serving``; None for a backend that runs
    nowhere in the cluster (an endpoint, or the mock provider)."""
    serving = backend.spec.serving
    if serving is None:
        return None
    settings = settings or BuildSettings()
    name = backend.metadata.name
    check_service_name(name, f"ModelBackend {name}")
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        BACKEND_LABEL: name,
        # The gateway is the only caller: keep the model off the public ingress.
        VISIBILITY_LABEL: CLUSTER_LOCAL,
    }
    timeout = serving.timeout_seconds or settings.default_timeout_seconds
    template_spec: dict[str, Any] = {
        "timeoutSeconds": timeout,
        # Time to the first byte: a cold model may think long before it streams.
        "responseStartTimeoutSeconds": timeout,
        "containers": [_model_container(serving)],
    }
    if serving.container_concurrency is not None:
        template_spec["containerConcurrency"] = serving.container_concurrency
    return {
        "apiVersion": KNATIVE_API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": _namespace(backend),
            "labels": labels,
            "ownerReferences": [owner_reference("ModelBackend", name, uid)],
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY, BACKEND_LABEL: name},
                    "annotations": {
                        **_scale_annotations(serving),
                        PROGRESS_DEADLINE: settings.progress_deadline,
                    },
                },
                "spec": template_spec,
            },
            "traffic": _traffic(serving),
        },
    }


def function_service(
    route: LlmRoute, uid: str, settings: BuildSettings | None = None
) -> dict[str, Any] | None:
    """The Knative Service of the route's prompt function; None unless
    ``spec.prompt.expose.function`` is true."""
    prompt = function_prompt(route)
    if prompt is None:
        return None
    settings = settings or BuildSettings()
    route_name = route.metadata.name
    name = function_service_name(route_name)
    check_service_name(name, f"LlmRoute {route_name} (prompt.expose.function)")
    namespace = _namespace(route)
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        ROUTE_LABEL: route_name,
        VISIBILITY_LABEL: CLUSTER_LOCAL,
    }
    env = [
        {"name": "KANAL_ROUTE", "value": route_name},
        {"name": "KANAL_ROUTE_NAMESPACE", "value": namespace},
        {"name": "KANAL_MODEL", "value": route.spec.model or route_name},
        {"name": "KANAL_GATEWAY_GRPC", "value": settings.gateway_grpc},
        # The prompt itself, so a prompt edit rolls out as a new revision (a new version
        # of the function, like a Lambda version).
        {
            "name": "KANAL_PROMPT",
            "value": json.dumps(
                prompt.model_dump(mode="json", by_alias=True, exclude_none=True),
                sort_keys=True,
                separators=(",", ":"),
            ),
        },
    ]
    return {
        "apiVersion": KNATIVE_API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference("LlmRoute", route_name, uid)],
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROUTE_LABEL: route_name},
                    "annotations": {MIN_SCALE: "0"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": FUNCTION_CONTAINER,
                            "image": settings.prompt_function_image,
                            "ports": [{"name": "http1", "containerPort": FUNCTION_PORT}],
                            "env": env,
                        }
                    ],
                },
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
    }


# -- owned fields ------------------------------------------------------------------------------


def owned_fields(ksvc: Mapping[str, Any]) -> dict[str, Any]:
    """What kanal owns on a Knative Service: the revision template, its own labels (present
    or absent) and the traffic block. Nothing else is compared or written."""
    metadata = ksvc.get("metadata") or {}
    labels = metadata.get("labels") or {}
    spec = ksvc.get("spec") or {}
    return {
        "labels": {key: labels.get(key) for key in MANAGED_LABELS},
        "template": spec.get("template"),
        "traffic": spec.get("traffic"),
    }


def needs_update(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    """True when the owned fields differ. Fields Knative adds by defaulting are not owned,
    so they never count; see :func:`owned_fields`."""
    return owned_fields(desired) != owned_fields(actual)


def owned_digest(ksvc: Mapping[str, Any]) -> str:
    """A short stable hash of the owned fields."""
    text = json.dumps(owned_fields(ksvc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def update_patch(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON Patch (RFC 6902) that sets the owned fields of ``actual`` to ``desired``'s.

    Unlike a merge patch, it also removes what kanal no longer wants (an autoscaling
    annotation dropped from the spec), and it touches nothing kanal does not own."""
    want = owned_fields(desired)
    have = owned_fields(actual)
    ops: list[dict[str, Any]] = []
    if want["labels"] != have["labels"]:
        if not (actual.get("metadata") or {}).get("labels"):
            ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
        for key in MANAGED_LABELS:
            value = want["labels"][key]
            if value == have["labels"][key]:
                continue
            if value is None:
                ops.append({"op": "remove", "path": _pointer("metadata", "labels", key)})
            else:
                ops.append(
                    {"op": "add", "path": _pointer("metadata", "labels", key), "value": value}
                )
    if "spec" not in actual:
        ops.append({"op": "add", "path": "/spec", "value": {}})
    for field in ("template", "traffic"):
        if want[field] != have[field]:
            if want[field] is None:
                ops.append({"op": "remove", "path": _pointer("spec", field)})
            else:
                ops.append({"op": "add", "path": _pointer("spec", field), "value": want[field]})
    return ops


def controller_uid(ksvc: Mapping[str, Any]) -> str | None:
    """uid of the object controlling this one (its controller owner reference), if any."""
    for ref in (ksvc.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            uid = ref.get("uid")
            return str(uid) if uid is not None else None
    return None


# -- readiness -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """Knative's verdict on a Service, as kanal reports it."""

    status: str
    """True, False or Unknown."""
    reason: str
    message: str
    url: str | None = None
    """status.url, once Knative has one (Ready or not)."""


def knative_readiness(ksvc: Mapping[str, Any] | None) -> Readiness:
    """Ready only when Knative's Ready condition is True *and* Knative has observed the
    current generation: a Ready status left over from the previous spec says nothing about
    the new one."""
    if ksvc is None:
        return Readiness("False", "ServiceMissing", "the Knative Service does not exist yet")
    metadata = ksvc.get("metadata") or {}
    status = ksvc.get("status") or {}
    name = metadata.get("name", "?")
    url = status.get("url") if isinstance(status.get("url"), str) else None
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if observed is None:
        return Readiness(
            "Unknown",
            "AwaitingKnative",
            f"Knative has not reported on Service {name} yet (is Knative Serving running?)",
            url,
        )
    if generation is not None and observed != generation:
        return Readiness(
            "Unknown",
            "OutdatedGeneration",
            f"Knative has observed generation {observed} of Service {name}, "
            f"not the current {generation}",
            url,
        )
    ready = find(status.get("conditions"), "Ready")
    if ready is None:
        return Readiness(
            "Unknown", "AwaitingKnative", f"Service {name} has no Ready condition yet", url
        )
    state = ready.get("status")
    state = state if state in ("True", "False") else "Unknown"
    reason = ready.get("reason") or ("Ready" if state == "True" else "NotReady")
    message = ready.get("message") or (
        f"Knative Service {name} is ready" if state == "True" else f"Service {name} is not ready"
    )
    return Readiness(state, reason, message, url)
