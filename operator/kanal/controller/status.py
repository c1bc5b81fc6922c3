"""The desired status of every ModelBackend and LlmRoute, from one compile (pure).

ModelBackend conditions:
  - ``Reconciled``: its Knative Service (if any) matches the spec, per the last reconcile.
  - ``ServingReady`` (only with ``spec.serving``): Knative's Ready, for the current generation.
  - ``Ready``: all of the above, and the compiler took it into the snapshot.
LlmRoute conditions:
  - ``BackendsResolved``: every backend reference resolves to a usable backend and model.
  - ``FunctionReady`` (only with ``prompt.expose.function``): the prompt function's Service.
  - ``Ready``: the gateways serve it (it is in the snapshot). A route the compiler leaves out
    gets Ready=False with the compiler's reason; other routes are unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kanal.controller.builders import (
    Readiness,
    function_prompt,
    function_service_name,
    knative_readiness,
)
from kanal.controller.conditions import (
    FALSE,
    TRUE,
    UNKNOWN,
    Cond,
    find,
    is_true,
    merge_conditions,
    summarize,
)
from kanal.controller.index import BackendEntry, Key, RouteEntry, ServiceEntry
from kanal.snapshot import Problem, Snapshot

READY = "Ready"
RECONCILED = "Reconciled"
SERVING_READY = "ServingReady"
BACKENDS_RESOLVED = "BackendsResolved"
FUNCTION_READY = "FunctionReady"

RESOLUTION_REASONS = frozenset({"BackendNotFound", "ModelNotFound"})


@dataclass(frozen=True)
class ReconcileResult:
    """What the last reconcile of an object's children concluded, for one generation."""

    generation: int | None
    status: str
    reason: str
    message: str


def _reconciled(
    entry: BackendEntry | RouteEntry,
    result: ReconcileResult | None,
    type_: str,
) -> Cond:
    gen = entry.generation
    if result is not None and result.generation == gen:
        return Cond(type_, result.status, result.reason, result.message, gen)
    recorded = _recorded(entry, type_)
    if recorded is not None:
        return recorded
    return Cond(
        type_, UNKNOWN, "Reconciling", f"the operator has not acted on generation {gen} yet"
    )


def _recorded(entry: BackendEntry | RouteEntry, type_: str) -> Cond | None:
    """The condition as recorded for the current generation, if any. Not reconciled in this
    process yet (e.g. just restarted), a condition keeps it rather than flapping to Unknown."""
    gen = entry.generation
    before = find(entry.status.get("conditions"), type_)
    if before is None or gen is None or before.get("observedGeneration") != gen:
        return None
    status = before.get("status")
    if status not in (TRUE, FALSE, UNKNOWN):
        return None
    return Cond(type_, status, str(before.get("reason")), str(before.get("message")), gen)


def _serving_cond(readiness: Readiness) -> Cond:
    return Cond(SERVING_READY, readiness.status, readiness.reason, readiness.message)


def _owned(service: ServiceEntry | None, uid: str) -> Mapping[str, Any] | None:
    if service is None or service.owner_uid != uid:
        return None
    return service.body


def backend_status(
    entry: BackendEntry,
    *,
    snapshot: Snapshot,
    problems: Mapping[str, Problem],
    service: ServiceEntry | None,
    reconciled: ReconcileResult | None,
    now: str,
) -> dict[str, Any]:
    """The full status kanal owns on a ModelBackend."""
    gen = entry.generation
    existing = entry.status.get("conditions")
    backend_id = f"{entry.namespace}/{entry.name}"
    if entry.model is None:
        why = f"the spec does not parse: {entry.error}"
        conds = [
            Cond(READY, FALSE, "InvalidSpec", why),
            Cond(RECONCILED, FALSE, "InvalidSpec", why),
        ]
        return {
            "conditions": merge_conditions(existing, conds, generation=gen, now=now),
            "observedGeneration": gen,
            "url": None,
            "models": None,
        }
    spec = entry.model.spec
    reconciled_cond = _reconciled(entry, reconciled, RECONCILED)
    parts = [reconciled_cond]
    url: str | None
    if spec.serving is not None:
        readiness = knative_readiness(_owned(service, entry.uid))
        serving = _serving_cond(readiness)
        parts.append(serving)
        url = readiness.url
        ready_message = f"Knative Service {entry.name} is ready; gateways route to it"
    elif spec.endpoint is not None:
        serving = None
        url = spec.endpoint
        ready_message = f"gateways route to {spec.endpoint}"
    else:
        serving = None
        url = None
        ready_message = "served by the gateways' built-in mock provider"
    problem = problems.get(backend_id)
    if backend_id in snapshot.backends:
        compiled = Cond(READY, TRUE, "Compiled", "in the routing snapshot")
    elif problem is not None:
        compiled = Cond(READY, FALSE, problem.reason, problem.message)
    else:
        compiled = Cond(READY, UNKNOWN, "Compiling", "not compiled yet")
    parts.append(compiled)
    ready = summarize(READY, parts, Cond(READY, TRUE, "Ready", ready_message))
    conds = [ready, reconciled_cond, *([serving] if serving is not None else [])]
    return {
        "conditions": merge_conditions(existing, conds, generation=gen, now=now),
        "observedGeneration": gen,
        "url": url,
        "models": [m.name for m in spec.models],
    }


def route_status(
    entry: RouteEntry,
    *,
    snapshot: Snapshot,
    problems: Mapping[str, Problem],
    backend_ready: Mapping[Key, bool],
    function: ServiceEntry | None,
    reconciled: ReconcileResult | None,
    now: str,
) -> dict[str, Any]:
    """The full status kanal owns on an LlmRoute."""
    gen = entry.generation
    existing = entry.status.get("conditions")
    route_id = f"{entry.namespace}/{entry.name}"
    if entry.model is None:
        why = f"the spec does not parse: {entry.error}"
        return {
            "conditions": merge_conditions(
                existing, [Cond(READY, FALSE, "InvalidSpec", why)], generation=gen, now=now
            ),
            "observedGeneration": gen,
            "backends": None,
            "functionUrl": None,
        }
    spec = entry.model.spec
    problem = None if route_id in snapshot.routes else problems.get(route_id)

    backends: list[dict[str, Any]] = []
    not_ready: list[str] = []
    for ref in spec.backends:
        namespace = ref.backend_ref.namespace or entry.namespace
        up = backend_ready.get((namespace, ref.backend_ref.name), False)
        backends.append(
            {
                "name": ref.backend_ref.name,
                "namespace": namespace,
                "model": ref.model,
                "ready": up,
            }
        )
        if not up:
            not_ready.append(f"{namespace}/{ref.backend_ref.name}")

    if problem is not None and problem.reason in RESOLUTION_REASONS:
        resolved = Cond(BACKENDS_RESOLVED, FALSE, problem.reason, problem.message)
    else:
        resolved = Cond(
            BACKENDS_RESOLVED, TRUE, "Resolved", f"all {len(spec.backends)} backend(s) resolved"
        )

    model = spec.model or entry.name
    if route_id in snapshot.routes:
        message = f"gateways serve model {model!r}"
        if not_ready:
            message += f"; backends not ready yet: {', '.join(sorted(set(not_ready)))}"
        ready = Cond(READY, TRUE, "Serving", message)
    elif problem is not None:
        ready = Cond(READY, FALSE, problem.reason, problem.message)
    else:
        ready = Cond(READY, UNKNOWN, "Compiling", "not compiled yet")

    conds = [ready, resolved]
    function_url = None
    if function_prompt(entry.model) is not None:
        conds.append(_function_cond(entry, function, reconciled))
        owned = _owned(function, entry.uid)
        function_url = knative_readiness(owned).url if owned is not None else None
    return {
        "conditions": merge_conditions(existing, conds, generation=gen, now=now),
        "observedGeneration": gen,
        "backends": backends,
        "functionUrl": function_url,
    }


def _function_cond(
    entry: RouteEntry, function: ServiceEntry | None, reconciled: ReconcileResult | None
) -> Cond:
    gen = entry.generation
    if reconciled is not None and reconciled.generation == gen and reconciled.status != TRUE:
        return Cond(FUNCTION_READY, reconciled.status, reconciled.reason, reconciled.message)
    owned = _owned(function, entry.uid)
    if owned is None and (reconciled is None or reconciled.generation != gen):
        recorded = _recorded(entry, FUNCTION_READY)
        if recorded is not None:
            return recorded
    readiness = knative_readiness(owned)
    if readiness.status == TRUE:
        return Cond(
            FUNCTION_READY,
            TRUE,
            readiness.reason,
            f"prompt function {function_service_name(entry.name)} is ready",
        )
    return Cond(FUNCTION_READY, readiness.status, readiness.reason, readiness.message)


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True if writing ``desired`` (a merge patch of status; None removes) changes anything."""
    return any(current.get(key) != value for key, value in desired.items())


def is_ready(status: Mapping[str, Any]) -> bool:
    return is_true(status.get("conditions"), READY)
