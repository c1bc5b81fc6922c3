"""Reconciling Knative Services against an in-memory API (with or without a defaulting
webhook): create once, update only owned fields, never loop on defaults."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from ctlkit import apply_json_patch, example, route_body, served_backend

from kanal.controller.index import parse_backend, parse_route
from kanal.controller.kube import Conflict
from kanal.controller.reconcile import Invalid, NotYet, Reconciler, failure, success


class FakeServices:
    """Knative Services in memory; ``defaulting`` plays Knative's webhook."""

    def __init__(self, *, installed: bool = True, defaulting: bool = False) -> None:
        self.installed = installed
        self.defaulting = defaulting
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self._uid = 0

    def _default(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.defaulting:
            spec = obj["spec"]["template"]["spec"]
            spec.setdefault("enableServiceLinks", False)
            for container in spec["containers"]:
                container.setdefault(
                    "readinessProbe", {"successThreshold": 1, "tcpSocket": {"port": 0}}
                )
        return obj

    async def knative_installed(self) -> bool:
        self.calls.append("discover")
        return self.installed

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def create_service(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            raise Conflict(409, "exists")
        self._uid += 1
        obj = self._default(copy.deepcopy(dict(body)))
        obj["metadata"] |= {"uid": f"ksvc-{self._uid}", "generation": 1}
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def patch_service(
        self, namespace: str, name: str, ops: list[dict[str, Any]], *, dry_run: bool = False
    ) -> dict[str, Any]:
        self.calls.append("dry-run" if dry_run else "patch")
        current = self.objects[(namespace, name)]
        patched = self._default(apply_json_patch(current, ops))
        if patched["spec"] != current["spec"]:
            patched["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if not dry_run:
            self.objects[(namespace, name)] = patched
        return copy.deepcopy(patched)

    async def delete_service(self, namespace: str, name: str, uid: str) -> None:
        self.calls.append("delete")
        if self.objects.get((namespace, name), {}).get("metadata", {}).get("uid") == uid:
            del self.objects[(namespace, name)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_create_then_nothing_to_do() -> None:
    api = FakeServices()
    rec = Reconciler(api)
    entry = parse_backend(example("ModelBackend", "local-llama"))
    assert run(rec.backend(entry)).action == "created"
    assert run(rec.backend(entry)).action == "unchanged"
    assert run(rec.backend(entry)).action == "unchanged"
    assert api.calls.count("create") == 1
    assert "patch" not in api.calls and "dry-run" not in api.calls
    assert rec.counts == {"created": 1, "updated": 0, "deleted": 0, "dry_runs": 0}


def test_defaulting_webhook_never_causes_updates() -> None:
    api = FakeServices(defaulting=True)
    rec = Reconciler(api)
    entry = parse_backend(example("ModelBackend", "local-llama"))
    run(rec.backend(entry))
    for _ in range(5):
        assert run(rec.backend(entry)).action == "unchanged"
    # one dry run proved the difference is defaulting; the verdict is remembered
    assert api.calls.count("dry-run") == 1
    assert api.calls.count("patch") == 0
    stored = next(iter(api.objects.values()))
    assert stored["metadata"]["generation"] == 1


def test_spec_change_updates_owned_fields_only() -> None:
    api = FakeServices(defaulting=True)
    rec = Reconciler(api)
    body = served_backend("llm", scale={"min": 0, "max": 2})
    run(rec.backend(parse_backend(body)))
    stored = api.objects[("team-a", "llm")]
    stored["metadata"]["labels"]["team"] = "ml"
    stored["metadata"]["annotations"] = {"serving.knative.dev/creator": "someone"}

    body["spec"]["serving"]["scale"]["max"] = 5
    body["metadata"]["generation"] = 2
    assert run(rec.backend(parse_backend(body))).action == "updated"
    stored = api.objects[("team-a", "llm")]
    annotations = stored["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/max-scale"] == "5"
    assert stored["metadata"]["labels"]["team"] == "ml"
    assert stored["metadata"]["annotations"] == {"serving.knative.dev/creator": "someone"}
    assert stored["metadata"]["generation"] == 2
    # and then it is settled again
    assert run(rec.backend(parse_backend(body))).action == "unchanged"
    assert api.calls.count("patch") == 1


def test_knative_missing_is_not_yet() -> None:
    rec = Reconciler(FakeServices(installed=False))
    with pytest.raises(NotYet) as err:
        run(rec.backend(parse_backend(served_backend("llm"))))
    assert err.value.reason == "KnativeServingMissing"
    result = failure(1, err.value)
    assert (result.status, result.reason) == ("False", "KnativeServingMissing")


def test_a_service_of_someone_else_is_a_conflict_and_left_alone() -> None:
    api = FakeServices()
    other = parse_backend(served_backend("llm"))
    run(Reconciler(api).backend(other))
    ours = parse_backend(
        {
            **served_backend("llm"),
            "metadata": {**served_backend("llm")["metadata"], "uid": "another"},
        }
    )
    before = copy.deepcopy(api.objects)
    with pytest.raises(NotYet) as err:
        run(Reconciler(api).backend(ours))
    assert err.value.reason == "ServiceConflict"
    assert api.objects == before
    # removing: only what this owner controls
    assert run(Reconciler(api).remove("team-a", "llm", "another")).action == "absent"
    assert api.objects == before


def test_invalid_input_is_permanent() -> None:
    rec = Reconciler(FakeServices())
    with pytest.raises(Invalid) as err:
        run(rec.backend(parse_backend(served_backend("llama.v2"))))
    assert err.value.reason == "InvalidName"
    broken = served_backend("llm")
    broken["spec"]["models"] = []
    with pytest.raises(Invalid) as err:
        run(rec.backend(parse_backend(broken)))
    assert err.value.reason == "InvalidSpec"


def test_serving_removed_deletes_the_service() -> None:
    api = FakeServices()
    rec = Reconciler(api)
    body = served_backend("llm")
    entry = parse_backend(body)
    run(rec.backend(entry))
    body["spec"].pop("serving")
    body["spec"]["endpoint"] = "http://x.test/v1"
    outcome = run(rec.backend(parse_backend(body)))
    assert outcome.action == "deleted"
    assert api.objects == {}
    result = success(2, outcome, serving=False)
    assert (result.status, result.message) == ("True", "nothing to run in the cluster")
    assert run(rec.backend(parse_backend(body))).action == "absent"


def test_prompt_function_lifecycle() -> None:
    api = FakeServices()
    rec = Reconciler(api)
    body = example("LlmRoute", "summarize-ticket")
    assert run(rec.route(parse_route(body))).action == "created"
    assert ("team-a", "summarize-ticket-prompt") in api.objects
    assert run(rec.route(parse_route(body))).action == "unchanged"
    body["spec"]["prompt"]["expose"]["function"] = False
    assert run(rec.route(parse_route(body))).action == "deleted"
    assert run(rec.route(parse_route(route_body("plain", ("mock", "m"))))).action == "absent"


def test_concurrent_reconciles_create_once() -> None:
    api = FakeServices()
    rec = Reconciler(api)
    entry = parse_backend(served_backend("llm"))

    async def many() -> list[str]:
        outcomes = await asyncio.gather(*(rec.backend(entry) for _ in range(10)))
        return [o.action for o in outcomes]

    actions = run(many())
    assert actions.count("created") == 1
    assert actions.count("unchanged") == 9


def test_settled_uses_the_dry_run_verdict() -> None:
    api = FakeServices(defaulting=True)
    rec = Reconciler(api)
    entry = parse_backend(served_backend("llm"))
    run(rec.backend(entry))
    desired = rec.desired_backend_service(entry)
    assert desired is not None
    stored = api.objects[("team-a", "llm")]
    assert not rec.settled(desired, stored)  # differs by defaults, not verified yet
    run(rec.backend(entry))  # dry run
    assert rec.settled(desired, stored)


def test_the_index_saves_api_calls() -> None:
    from kanal.controller.index import parse_service

    api = FakeServices()
    rec = Reconciler(api)
    entry = parse_backend(served_backend("llm"))
    run(rec.backend(entry))
    indexed = {key: parse_service(obj) for key, obj in api.objects.items()}

    def lookup(namespace: str, name: str) -> Any:
        return indexed.get((namespace, name))

    api.calls.clear()
    assert run(rec.backend(entry, lookup)).action == "unchanged"
    assert api.calls == []  # settled per the index: not even a GET
    mock = parse_backend(example("ModelBackend", "mock"))
    assert run(rec.backend(mock, lookup)).action == "absent"
    assert api.calls == []
    # the index is behind (shows nothing): a real reconcile finds and keeps the Service
    assert run(rec.backend(entry, lambda ns, n: None)).action == "unchanged"
    assert api.calls == ["get"]
