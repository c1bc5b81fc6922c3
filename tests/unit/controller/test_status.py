"""The desired status of backends and routes, from a compile."""

from __future__ import annotations

from typing import Any

from ctlkit import NS, example, knative_status, mock_backend, route_body, served_backend

from kanal.controller.builders import backend_service
from kanal.controller.conditions import find
from kanal.controller.index import parse_backend, parse_route, parse_service
from kanal.controller.status import (
    ReconcileResult,
    backend_status,
    differs,
    is_ready,
    route_status,
)
from kanal.snapshot import Problem, Snapshot, compile_snapshot

NOW = "2026-01-01T00:00:00Z"
OK = ReconcileResult(1, "True", "Reconciled", "up to date")


def compiled(*bodies: dict[str, Any]) -> tuple[Snapshot, dict[str, Problem]]:
    backends = [
        e.model for b in bodies if b["kind"] == "ModelBackend" if (e := parse_backend(b)).model
    ]
    routes = [e.model for b in bodies if b["kind"] == "LlmRoute" if (e := parse_route(b)).model]
    snapshot = compile_snapshot(backends, routes)
    return snapshot, {p.id: p for p in snapshot.problems}


def cond(status: dict[str, Any], type_: str) -> tuple[Any, Any]:
    found = find(status["conditions"], type_)
    assert found is not None, status
    return found["status"], found["reason"]


def test_mock_and_endpoint_backends_are_ready_when_compiled() -> None:
    mock = mock_backend()
    snapshot, problems = compiled(mock)
    status = backend_status(
        parse_backend(mock),
        snapshot=snapshot,
        problems=problems,
        service=None,
        reconciled=OK,
        now=NOW,
    )
    assert cond(status, "Ready") == ("True", "Ready")
    assert cond(status, "Reconciled") == ("True", "Reconciled")
    assert find(status["conditions"], "ServingReady") is None
    assert status["url"] is None
    assert status["models"] == ["m"]
    assert status["observedGeneration"] == 1
    assert is_ready(status)

    openai = example("ModelBackend", "openai")
    snapshot, problems = compiled(openai)  # no Secret: left out
    status = backend_status(
        parse_backend(openai),
        snapshot=snapshot,
        problems=problems,
        service=None,
        reconciled=OK,
        now=NOW,
    )
    assert cond(status, "Ready") == ("False", "SecretNotFound")
    assert status["url"] == "https://api.openai.com/v1"


def test_serving_backend_follows_knative() -> None:
    body = served_backend("llm")
    entry = parse_backend(body)
    snapshot, problems = compiled(body)
    desired = backend_service(entry.model, entry.uid)  # type: ignore[arg-type]
    assert desired is not None

    def status_with(
        service: dict[str, Any] | None, reconciled: ReconcileResult | None = OK
    ) -> dict[str, Any]:
        return backend_status(
            entry,
            snapshot=snapshot,
            problems=problems,
            service=parse_service(service) if service else None,
            reconciled=reconciled,
            now=NOW,
        )

    missing = status_with(None)
    assert cond(missing, "Ready") == ("False", "ServiceMissing")
    waiting = status_with({**desired, "metadata": {**desired["metadata"], "generation": 1}})
    assert cond(waiting, "ServingReady") == ("Unknown", "AwaitingKnative")
    assert cond(waiting, "Ready") == ("Unknown", "AwaitingKnative")
    ready = status_with(knative_status(desired))
    assert cond(ready, "Ready") == ("True", "Ready")
    assert cond(ready, "ServingReady") == ("True", "Ready")
    assert ready["url"] == f"http://llm.{NS}.svc.cluster.local"

    # a Service controlled by someone else does not count
    foreign = knative_status(desired)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    assert cond(status_with(foreign), "Ready") == ("False", "ServiceMissing")

    # reconcile failure wins
    failed = status_with(
        knative_status(desired), ReconcileResult(1, "False", "KnativeServingMissing", "no")
    )
    assert cond(failed, "Ready") == ("False", "KnativeServingMissing")


def test_reconciled_is_kept_across_restarts_for_the_same_generation() -> None:
    body = mock_backend()
    snapshot, problems = compiled(body)
    first = backend_status(
        parse_backend(body),
        snapshot=snapshot,
        problems=problems,
        service=None,
        reconciled=OK,
        now=NOW,
    )
    body["status"] = first
    # a new process knows nothing yet: it keeps what is recorded, so nothing flaps
    again = backend_status(
        parse_backend(body),
        snapshot=snapshot,
        problems=problems,
        service=None,
        reconciled=None,
        now="later",
    )
    assert not differs(first, again)
    # for a new generation the recorded verdict is not reused
    body["metadata"]["generation"] = 2
    newer = backend_status(
        parse_backend(body),
        snapshot=snapshot,
        problems=problems,
        service=None,
        reconciled=None,
        now="later",
    )
    assert cond(newer, "Reconciled") == ("Unknown", "Reconciling")
    assert newer["observedGeneration"] == 2


def test_unparseable_backend_says_why() -> None:
    body = mock_backend()
    body["spec"]["models"] = []
    entry = parse_backend(body)
    assert entry.model is None and entry.error
    snapshot, problems = compiled()
    status = backend_status(
        entry, snapshot=snapshot, problems=problems, service=None, reconciled=None, now=NOW
    )
    assert cond(status, "Ready") == ("False", "InvalidSpec")
    assert "models" in find(status["conditions"], "Ready")["message"]  # type: ignore[index]


def test_routes_left_out_get_the_compilers_reason_and_others_stay_ready() -> None:
    bodies = [
        mock_backend(),
        route_body("good", ("mock", "m")),
        route_body("missing", ("nope", "m")),
        route_body("wrong-model", ("mock", "x")),
        route_body("zz-dup", ("mock", "m"), model="good"),
    ]
    snapshot, problems = compiled(*bodies)
    ready = {(NS, "mock"): True}

    def status_of(body: dict[str, Any]) -> dict[str, Any]:
        return route_status(
            parse_route(body),
            snapshot=snapshot,
            problems=problems,
            backend_ready=ready,
            function=None,
            reconciled=None,
            now=NOW,
        )

    good = status_of(bodies[1])
    assert cond(good, "Ready") == ("True", "Serving")
    assert cond(good, "BackendsResolved") == ("True", "Resolved")
    assert good["backends"] == [{"name": "mock", "namespace": NS, "model": "m", "ready": True}]
    assert find(good["conditions"], "FunctionReady") is None
    missing = status_of(bodies[2])
    assert cond(missing, "Ready") == ("False", "BackendNotFound")
    assert cond(missing, "BackendsResolved") == ("False", "BackendNotFound")
    assert missing["backends"][0]["ready"] is False
    assert cond(status_of(bodies[3]), "Ready") == ("False", "ModelNotFound")
    dup = status_of(bodies[4])
    assert cond(dup, "Ready") == ("False", "ModelConflict")
    assert cond(dup, "BackendsResolved") == ("True", "Resolved")


def test_route_mentions_backends_not_ready() -> None:
    bodies = [mock_backend(), route_body("r", ("mock", "m"))]
    snapshot, problems = compiled(*bodies)
    status = route_status(
        parse_route(bodies[1]),
        snapshot=snapshot,
        problems=problems,
        backend_ready={},
        function=None,
        reconciled=None,
        now=NOW,
    )
    ready = find(status["conditions"], "Ready")
    assert ready is not None and ready["status"] == "True"
    assert f"not ready yet: {NS}/mock" in ready["message"]


def test_function_ready_follows_the_function_service() -> None:
    body = example("LlmRoute", "summarize-ticket")
    bodies = [example("ModelBackend", "mock"), body]
    snapshot, problems = compiled(*bodies)
    entry = parse_route(body)
    from kanal.controller.builders import function_service

    desired = function_service(entry.model, entry.uid)  # type: ignore[arg-type]
    assert desired is not None

    def status_with(
        service: dict[str, Any] | None, reconciled: ReconcileResult | None
    ) -> dict[str, Any]:
        return route_status(
            entry,
            snapshot=snapshot,
            problems=problems,
            backend_ready={},
            function=parse_service(service) if service else None,
            reconciled=reconciled,
            now=NOW,
        )

    ok = status_with(knative_status(desired), OK)
    assert cond(ok, "FunctionReady") == ("True", "Ready")
    assert ok["functionUrl"] == f"http://summarize-ticket-prompt.{NS}.svc.cluster.local"
    assert cond(ok, "Ready") == ("True", "Serving")
    waiting = status_with(None, OK)
    assert cond(waiting, "FunctionReady") == ("False", "ServiceMissing")
    assert waiting["functionUrl"] is None
    missing = ReconcileResult(1, "False", "KnativeServingMissing", "install Knative")
    assert cond(status_with(None, missing), "FunctionReady") == ("False", "KnativeServingMissing")


def test_differs() -> None:
    assert not differs({"a": 1, "other": 2}, {"a": 1})
    assert differs({"a": 1}, {"a": 2})
    assert differs({"a": 1}, {"b": 1})
    assert not differs({}, {"url": None})
