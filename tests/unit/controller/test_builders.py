"""Pure builders: Knative Service manifests, owned fields, readiness."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from ctlkit import (
    NS,
    apply_json_patch,
    backend_model,
    example,
    knative_status,
    route_model,
    served_backend,
)

from kanal.controller.builders import (
    BuildSettings,
    InvalidChild,
    backend_service,
    function_service,
    knative_readiness,
    needs_update,
    owned_fields,
    update_patch,
)


def llama() -> dict[str, Any]:
    svc = backend_service(backend_model(example("ModelBackend", "local-llama")), "uid-1")
    assert svc is not None
    return svc


def test_backend_service_has_fixed_name_owner_and_visibility() -> None:
    svc = llama()
    assert svc["apiVersion"] == "serving.knative.dev/v1"
    assert svc["kind"] == "Service"
    assert svc["metadata"]["name"] == "local-llama"
    assert svc["metadata"]["namespace"] == NS
    assert svc["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kanal",
        "kanal.dev/backend": "local-llama",
        "networking.knative.dev/visibility": "cluster-local",
    }
    assert svc["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kanal.dev/v1alpha1",
            "kind": "ModelBackend",
            "name": "local-llama",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_backend_service_template_and_traffic() -> None:
    svc = llama()
    template = svc["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": "3",
        "autoscaling.knative.dev/target": "4",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/scale-down-delay": "5m",
        "serving.knative.dev/progress-deadline": "30m",
    }
    spec = template["spec"]
    assert spec["containerConcurrency"] == 8
    assert spec["timeoutSeconds"] == 600
    assert spec["responseStartTimeoutSeconds"] == 600
    assert spec["containers"] == [
        {
            "name": "model",
            "image": "vllm/vllm-openai:v0.6.3",
            "ports": [{"name": "http1", "containerPort": 8080}],
            "args": ["--model", "meta-llama/Llama-3.2-1B-Instruct", "--port", "8080"],
            "resources": {
                "limits": {"nvidia.com/gpu": "1"},
                "requests": {"cpu": "2", "memory": "8Gi"},
            },
        }
    ]
    assert svc["spec"]["traffic"] == [
        {"revisionName": "local-llama-00001", "latestRevision": False, "percent": 90},
        {"latestRevision": True, "percent": 10, "tag": "canary"},
    ]


def test_backend_service_all_scale_knobs_env_and_defaults() -> None:
    body = served_backend(
        "llm",
        scale={"min": 1, "max": 4, "target": 10, "metric": "rps", "initial": 2},
        env=[
            {"name": "A", "value": "1"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ],
        timeoutSeconds=900,
    )
    svc = backend_service(backend_model(body), "u")
    assert svc is not None
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    assert annotations["autoscaling.knative.dev/target"] == "10"
    assert annotations["autoscaling.knative.dev/metric"] == "rps"
    assert annotations["autoscaling.knative.dev/initial-scale"] == "2"
    assert "autoscaling.knative.dev/scale-down-delay" not in annotations
    (container,) = svc["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [
        {"name": "A", "value": "1"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ]
    assert svc["spec"]["template"]["spec"]["timeoutSeconds"] == 900
    assert svc["spec"]["template"]["spec"]["responseStartTimeoutSeconds"] == 900
    assert "containerConcurrency" not in svc["spec"]["template"]["spec"]

    plain = backend_service(backend_model(served_backend("plain")), "u")
    assert plain is not None
    # no scale: Knative's autoscaling defaults; the progress deadline is always set
    assert plain["spec"]["template"]["metadata"]["annotations"] == {
        "serving.knative.dev/progress-deadline": "30m"
    }
    assert plain["spec"]["template"]["spec"]["timeoutSeconds"] == 600
    assert plain["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    custom = backend_service(
        backend_model(served_backend("plain")),
        "u",
        BuildSettings(progress_deadline="1h", default_timeout_seconds=300),
    )
    assert custom is not None
    assert custom["spec"]["template"]["metadata"]["annotations"] == {
        "serving.knative.dev/progress-deadline": "1h"
    }
    assert custom["spec"]["template"]["spec"]["timeoutSeconds"] == 300


def test_builders_are_deterministic() -> None:
    assert llama() == llama()
    assert json.dumps(llama(), sort_keys=True) == json.dumps(llama(), sort_keys=True)


def test_no_service_for_endpoint_or_mock_backends() -> None:
    assert backend_service(backend_model(example("ModelBackend", "openai")), "u") is None
    assert backend_service(backend_model(example("ModelBackend", "mock")), "u") is None


@pytest.mark.parametrize("name", ["llama.v2", "1llama", "x" * 64])
def test_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    with pytest.raises(InvalidChild) as err:
        backend_service(backend_model(served_backend(name)), "u")
    assert err.value.reason == "InvalidName"
    assert repr(name) in err.value.message


def test_function_service() -> None:
    route = route_model(example("LlmRoute", "summarize-ticket"))
    svc = function_service(
        route, "uid-r", BuildSettings(prompt_function_image="img:1", gateway_grpc="gw:9090")
    )
    assert svc is not None
    assert svc["metadata"]["name"] == "summarize-ticket-prompt"
    assert svc["metadata"]["labels"]["kanal.dev/route"] == "summarize-ticket"
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "LlmRoute"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-r"
    (container,) = svc["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "img:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KANAL_ROUTE"] == "summarize-ticket"
    assert env["KANAL_ROUTE_NAMESPACE"] == NS
    assert env["KANAL_MODEL"] == "summarize-ticket"
    assert env["KANAL_GATEWAY_GRPC"] == "gw:9090"
    prompt = json.loads(env["KANAL_PROMPT"])
    assert prompt["template"] == "Ticket from {{customer}}:\n{{ticket}}"
    assert prompt["expose"] == {"function": True}
    # a route that does not expose its prompt has no function
    assert function_service(route_model(example("LlmRoute", "chat")), "u") is None


def knative_defaulted(svc: dict[str, Any]) -> dict[str, Any]:
    """What a real cluster stores: Knative's webhook defaults, metadata, status."""
    out = knative_status(copy.deepcopy(svc))
    out["metadata"]["annotations"] = {"serving.knative.dev/creator": "system:admin"}
    out["metadata"]["resourceVersion"] = "77"
    out["metadata"]["managedFields"] = [{"manager": "kanal"}]
    out["metadata"]["labels"]["team"] = "ml"  # someone else's label
    out["spec"]["template"]["spec"]["enableServiceLinks"] = False
    out["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"successThreshold": 1}
    return out


def test_needs_update_compares_only_owned_fields() -> None:
    desired = llama()
    assert not needs_update(desired, copy.deepcopy(desired))
    stored = knative_status(copy.deepcopy(desired))
    stored["metadata"]["annotations"] = {"serving.knative.dev/creator": "x"}
    stored["metadata"]["labels"]["team"] = "ml"
    assert not needs_update(desired, stored)

    # the owned fields: template, kanal's labels, traffic
    changed = copy.deepcopy(desired)
    changed["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] = (
        "9"
    )
    assert needs_update(desired, changed)
    changed = copy.deepcopy(desired)
    changed["spec"]["traffic"][0]["percent"] = 50
    assert needs_update(desired, changed)
    changed = copy.deepcopy(desired)
    del changed["metadata"]["labels"]["networking.knative.dev/visibility"]
    assert needs_update(desired, changed)


def test_defaulting_inside_the_template_is_a_difference_a_dry_run_settles() -> None:
    # Defaults inside the template (readinessProbe, enableServiceLinks) do differ from what
    # kanal asks for; the reconciler settles that with a server-side dry run (see
    # test_reconcile), never by writing.
    desired = llama()
    assert needs_update(desired, knative_defaulted(desired))


def test_update_patch_sets_owned_fields_and_keeps_the_rest() -> None:
    desired = llama()
    actual = knative_defaulted(desired)
    actual["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] = "9"
    actual["spec"]["traffic"] = [{"latestRevision": True, "percent": 100}]
    actual["metadata"]["labels"]["kanal.dev/route"] = "stale"
    del actual["metadata"]["labels"]["networking.knative.dev/visibility"]
    ops = update_patch(desired, actual)
    patched = apply_json_patch(actual, ops)
    assert owned_fields(patched) == owned_fields(desired)
    assert not needs_update(desired, patched)
    # not ours: untouched
    assert patched["metadata"]["labels"]["team"] == "ml"
    assert patched["metadata"]["annotations"] == {"serving.knative.dev/creator": "system:admin"}
    assert patched["status"] == actual["status"]
    # an annotation kanal no longer wants is removed, not merged over
    smaller = backend_service(backend_model(served_backend("local-llama")), "uid-1")
    assert smaller is not None
    shrunk = apply_json_patch(patched, update_patch(smaller, patched))
    assert shrunk["spec"]["template"]["metadata"]["annotations"] == {
        "serving.knative.dev/progress-deadline": "30m"
    }
    assert update_patch(desired, copy.deepcopy(desired)) == []


def test_update_patch_on_a_service_without_labels() -> None:
    desired = llama()
    bare = copy.deepcopy(desired)
    del bare["metadata"]["labels"]
    patched = apply_json_patch(bare, update_patch(desired, bare))
    assert patched["metadata"]["labels"] == desired["metadata"]["labels"]


def test_knative_readiness() -> None:
    svc = llama()
    svc["metadata"]["generation"] = 2
    missing = knative_readiness(None)
    assert (missing.status, missing.reason) == ("False", "ServiceMissing")
    fresh = knative_readiness(svc)
    assert (fresh.status, fresh.reason) == ("Unknown", "AwaitingKnative")

    ready = knative_readiness(knative_status(svc, observed=2))
    assert (ready.status, ready.reason) == ("True", "Ready")
    assert ready.url == f"http://local-llama.{NS}.svc.cluster.local"

    # Ready=True for an older generation is not Ready
    lagging = knative_readiness(knative_status(svc, observed=1))
    assert (lagging.status, lagging.reason) == ("Unknown", "OutdatedGeneration")
    assert "generation 1" in lagging.message and "current 2" in lagging.message

    failed = knative_readiness(
        knative_status(svc, ready="False", reason="RevisionFailed", message="pull failed")
    )
    assert (failed.status, failed.reason, failed.message) == (
        "False",
        "RevisionFailed",
        "pull failed",
    )
    pending = knative_readiness(knative_status(svc, ready="Unknown", reason="Deploying"))
    assert (pending.status, pending.reason) == ("Unknown", "Deploying")
    no_condition = knative_status(svc)
    no_condition["status"]["conditions"] = []
    assert knative_readiness(no_condition).status == "Unknown"
