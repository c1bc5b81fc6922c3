"""The generated CRDs on a real kube-apiserver: installed, enforced, shown, explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_cases import CASES, BadCase, hosted_backend, route, served_backend
from kanal.api import KINDS, LlmRoute, ModelBackend

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.usefixtures("crds_installed")


def _apply(kube: Any, obj: dict[str, Any]) -> Any:
    return kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)


def test_crds_are_established(kube: Any) -> None:
    for kind in KINDS:
        crd = kube.apiext.read_custom_resource_definition(kind.crd_name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions


def test_examples_apply_with_kubectl(kube: Any) -> None:
    result = kube.kubectl("apply", "-f", str(ROOT / "examples"))
    created = result.stdout.strip().splitlines()
    assert len(created) == 7, result.stdout
    assert all(line.endswith(" created") for line in created), result.stdout
    routes = kube.custom.list_namespaced_custom_object(
        "kanal.dev", "v1alpha1", kube.namespace, "llmroutes"
    )
    names = {item["metadata"]["name"] for item in routes["items"]}
    assert names == {"chat", "demo", "summarize-ticket"}
    chat = next(i for i in routes["items"] if i["metadata"]["name"] == "chat")
    # the quoted "on" key arrives as the field `on`, not as YAML 1.1's `true`
    assert chat["spec"]["retry"]["on"] == ["5xx", "timeout", "rate-limited", "connect-error"]


@pytest.mark.parametrize(
    ("model", "base"),
    [(ModelBackend, hosted_backend), (ModelBackend, served_backend), (LlmRoute, route)],
)
def test_server_defaults_equal_model_defaults(kube: Any, model: Any, base: Any) -> None:
    obj = base()
    if model is LlmRoute:
        obj["spec"]["retry"] = {}
        obj["spec"]["context"] = {}
        obj["spec"]["cache"] = {}
    else:
        obj["spec"]["timeouts"] = {}
    _apply(kube, obj).check_returncode()
    plural = "llmroutes" if model is LlmRoute else "modelbackends"
    stored = kube.custom.get_namespaced_custom_object(
        "kanal.dev", "v1alpha1", kube.namespace, plural, obj["metadata"]["name"]
    )
    ours = json.loads(
        model.model_validate(obj).spec.model_dump_json(by_alias=True, exclude_none=True)
    )
    assert stored["spec"] == ours


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_object_refused_by_api_server(kube: Any, case: BadCase) -> None:
    result = _apply(kube, case.build())
    assert result.returncode != 0, f"{case.id} was accepted by the API server"
    assert case.field in result.stderr, result.stderr
    assert case.says in result.stderr, result.stderr


def _set_ready(kube: Any, plural: str, name: str, reason: str) -> None:
    status = {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": reason,
                    "message": "serving",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            **({"url": "https://api.openai.com/v1"} if plural == "modelbackends" else {}),
        }
    }
    kube.kubectl(
        "patch", plural, name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def test_kubectl_get_shows_printer_columns(kube: Any) -> None:
    _apply(kube, hosted_backend()).check_returncode()
    chat = route()
    chat["spec"]["model"] = "chat-public"
    _apply(kube, chat).check_returncode()
    _set_ready(kube, "modelbackends", "hosted", "BackendReady")
    _set_ready(kube, "llmroutes", "chat", "RouteServing")

    out = kube.kubectl("get", "lr,mb").stdout
    lines = [line.split() for line in out.strip().splitlines() if line.strip()]
    headers = [line for line in lines if line[0] == "NAME"]
    assert headers[0] == ["NAME", "MODEL", "READY", "REASON", "AGE"]
    assert headers[1] == ["NAME", "PROVIDER", "URL", "READY", "REASON", "AGE"]
    rows = {line[0]: line for line in lines if line[0] != "NAME"}
    assert rows["llmroute.kanal.dev/chat"][1:4] == ["chat-public", "True", "RouteServing"]
    assert rows["modelbackend.kanal.dev/hosted"][1:5] == [
        "openai",
        "https://api.openai.com/v1",
        "True",
        "BackendReady",
    ]
    wide = kube.kubectl("get", "lr", "-o", "wide").stdout
    assert "FUNCTION" in wide.splitlines()[0]
    # short names and the category work too
    assert "chat" in kube.kubectl("get", "kanal").stdout


def test_kubectl_explain_shows_field_docs(kube: Any) -> None:
    out = " ".join(kube.kubectl("explain", "llmroute.spec.context").stdout.split())
    assert "Conversation memory keyed by X-Session-Id" in out
    for field in ("maxTokens", "strategy", "summarizer", "ttl", "enabled"):
        assert field in out
    assert "window keeps the newest turns that fit" in out
    scale = " ".join(kube.kubectl("explain", "mb.spec.serving.scale.min").stdout.split())
    assert "0 scales to zero" in scale


def test_status_is_a_subresource(kube: Any) -> None:
    """Writing status through the main resource is ignored; only /status changes it."""
    obj = hosted_backend()
    obj["status"] = {"url": "http://sneaky"}
    _apply(kube, obj).check_returncode()
    stored = kube.custom.get_namespaced_custom_object(
        "kanal.dev", "v1alpha1", kube.namespace, "modelbackends", "hosted"
    )
    assert "status" not in stored or "url" not in stored.get("status", {})
