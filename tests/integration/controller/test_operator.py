"""`kanal operator` against the real API server: children, readiness, snapshots, lifecycle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from opkit import (
    Operators,
    cond_status,
    condition,
    create_openai_key,
    kanal_obj,
    ksvc,
    ksvcs,
    play_knative,
    snapshot_secret,
    wait_for,
)

from harness import Kube

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def apply_examples(kube: Kube) -> None:
    create_openai_key(kube)
    kube.kubectl("apply", "-f", str(EXAMPLES))


def apply(kube: Kube, obj: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def backend(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {"provider": "mock", "models": [{"name": "m", "contextWindow": 1000}], **spec},
    }


def served(name: str, **serving: Any) -> dict[str, Any]:
    return backend(
        name, provider="openai-compatible", serving={"image": "example.test/model:1", **serving}
    )


def route(name: str, backend_name: str, model: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "LlmRoute",
        "metadata": {"name": name},
        "spec": {"backends": [{"backendRef": {"name": backend_name}, "model": model}]},
    }


def persisted_version(kube: Kube) -> str | None:
    found = snapshot_secret(kube)
    return found[0] if found else None


def test_examples_become_knative_services(kube: Kube, operators: Operators) -> None:
    operators.start()
    apply_examples(kube)

    llama = wait_for("ksvc local-llama", lambda: ksvc(kube, "local-llama"))
    fallback = wait_for("ksvc fallback", lambda: ksvc(kube, "fallback"))
    function = wait_for(
        "ksvc summarize-ticket-prompt", lambda: ksvc(kube, "summarize-ticket-prompt")
    )
    # endpoint and mock backends run nothing in the cluster
    assert sorted(s["metadata"]["name"] for s in ksvcs(kube)) == [
        "fallback",
        "local-llama",
        "summarize-ticket-prompt",
    ]

    owner = kanal_obj(kube, "modelbackends", "local-llama")
    assert llama["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kanal.dev/v1alpha1",
            "kind": "ModelBackend",
            "name": "local-llama",
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert llama["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kanal",
        "kanal.dev/backend": "local-llama",
        "networking.knative.dev/visibility": "cluster-local",
    }
    template = llama["spec"]["template"]
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
    (container,) = spec["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.6.3"
    assert container["args"][:2] == ["--model", "meta-llama/Llama-3.2-1B-Instruct"]
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert container["resources"] == {
        "limits": {"nvidia.com/gpu": "1"},
        "requests": {"cpu": "2", "memory": "8Gi"},
    }
    assert llama["spec"]["traffic"] == [
        {"revisionName": "local-llama-00001", "latestRevision": False, "percent": 90},
        {"latestRevision": True, "percent": 10, "tag": "canary"},
    ]
    # min 1 keeps a replica warm; no traffic block means all to the latest revision
    fallback_annotations = fallback["spec"]["template"]["metadata"]["annotations"]
    assert fallback_annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert fallback["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]

    route_uid = kanal_obj(kube, "llmroutes", "summarize-ticket")["metadata"]["uid"]
    assert function["metadata"]["ownerReferences"][0]["uid"] == route_uid
    assert function["metadata"]["ownerReferences"][0]["kind"] == "LlmRoute"
    (fn,) = function["spec"]["template"]["spec"]["containers"]
    assert fn["image"] == "example.test/kanal-prompt:test"
    env = {e["name"]: e["value"] for e in fn["env"]}
    assert env["KANAL_ROUTE"] == "summarize-ticket"
    assert env["KANAL_ROUTE_NAMESPACE"] == kube.namespace
    assert env["KANAL_GATEWAY_GRPC"] == "kanal-gateway.kanal-system.svc.cluster.local:9090"

    # every route compiles: each is Ready (served) with its backends resolved
    for name in ("chat", "demo", "summarize-ticket"):
        wait_for(f"route {name} Ready", lambda n=name: cond_status(kube, "llmroutes", n) == "True")
        assert cond_status(kube, "llmroutes", name, "BackendsResolved") == "True"
    version, snapshot = wait_for("persisted snapshot", lambda: snapshot_secret(kube))
    assert version == snapshot.version
    assert sorted(snapshot.routes) == [
        f"{kube.namespace}/{r}" for r in ("chat", "demo", "summarize-ticket")
    ]
    assert snapshot.backends[f"{kube.namespace}/openai"].api_key is not None
    assert snapshot.backends[f"{kube.namespace}/openai"].api_key.get_secret_value() == "sk-test-1"


def test_backend_ready_only_when_knative_ready_for_its_generation(
    kube: Kube, operators: Operators
) -> None:
    operators.start()
    apply(kube, served("llm", scale={"min": 0, "max": 2}))
    wait_for("ksvc llm", lambda: ksvc(kube, "llm"))
    wait_for(
        "llm waiting for Knative",
        lambda: (
            (c := condition(kanal_obj(kube, "modelbackends", "llm"), "ServingReady"))
            and c["reason"] == "AwaitingKnative"
        ),
    )
    assert cond_status(kube, "modelbackends", "llm") != "True"

    play_knative(kube, "llm", ready="False", reason="RevisionFailed", message="image pull failed")
    wait_for(
        "Knative's reason on the backend",
        lambda: (
            (c := condition(kanal_obj(kube, "modelbackends", "llm"), "Ready"))
            and c["status"] == "False"
            and c["reason"] == "RevisionFailed"
            and c["message"] == "image pull failed"
        ),
    )

    play_knative(kube, "llm", observed=1)
    wait_for("llm Ready", lambda: cond_status(kube, "modelbackends", "llm") == "True")
    status = kanal_obj(kube, "modelbackends", "llm")["status"]
    assert status["url"] == f"http://llm.{kube.namespace}.svc.cluster.local"
    assert status["observedGeneration"] == 1
    assert status["models"] == ["m"]
    assert condition(kanal_obj(kube, "modelbackends", "llm"), "Reconciled")["status"] == "True"

    # a spec edit makes a new ksvc generation; Knative's old Ready no longer counts
    apply(kube, served("llm", scale={"min": 1, "max": 2}))
    wait_for("ksvc generation 2", lambda: (ksvc(kube, "llm") or {})["metadata"]["generation"] == 2)
    wait_for(
        "llm not Ready while Knative lags",
        lambda: (
            (c := condition(kanal_obj(kube, "modelbackends", "llm"), "ServingReady"))
            and c["reason"] == "OutdatedGeneration"
        ),
    )
    assert cond_status(kube, "modelbackends", "llm") == "Unknown"
    assert (ksvc(kube, "llm") or {})["spec"]["template"]["metadata"]["annotations"][
        "autoscaling.knative.dev/min-scale"
    ] == "1"

    play_knative(kube, "llm", observed=2)
    wait_for("llm Ready again", lambda: cond_status(kube, "modelbackends", "llm") == "True")
    assert kanal_obj(kube, "modelbackends", "llm")["status"]["observedGeneration"] == 2


def test_invalid_route_is_left_out_and_others_keep_serving(
    kube: Kube, operators: Operators
) -> None:
    operators.start()
    apply(kube, backend("mock"))
    apply(kube, route("good", "mock"))
    apply(kube, route("bad", "missing"))

    wait_for("good Ready", lambda: cond_status(kube, "llmroutes", "good") == "True")
    bad = wait_for(
        "bad not Ready",
        lambda: (
            (c := condition(kanal_obj(kube, "llmroutes", "bad"), "Ready"))
            and c["status"] == "False"
            and c
        ),
    )
    assert bad["reason"] == "BackendNotFound"
    assert f"ModelBackend {kube.namespace}/missing" in bad["message"]
    resolved = condition(kanal_obj(kube, "llmroutes", "bad"), "BackendsResolved")
    assert resolved is not None
    assert resolved["status"] == "False"
    _, snapshot = wait_for("snapshot", lambda: snapshot_secret(kube))
    assert f"{kube.namespace}/good" in snapshot.routes
    assert f"{kube.namespace}/bad" not in snapshot.routes

    # a route asking for a model the backend lacks: its own reason
    apply(kube, route("wrong-model", "mock", model="nope"))
    wait_for(
        "wrong-model ModelNotFound",
        lambda: (
            (c := condition(kanal_obj(kube, "llmroutes", "wrong-model"), "Ready"))
            and c["reason"] == "ModelNotFound"
        ),
    )
    assert cond_status(kube, "llmroutes", "good") == "True"

    # the missing backend appears: the route heals
    apply(kube, backend("missing"))
    wait_for("bad Ready", lambda: cond_status(kube, "llmroutes", "bad") == "True")
    wait_for(
        "bad in the snapshot",
        lambda: (s := snapshot_secret(kube)) and f"{kube.namespace}/bad" in s[1].routes,
    )


def test_snapshot_secret_follows_edits_and_secret_rotation(
    kube: Kube, operators: Operators
) -> None:
    operators.start()
    apply_examples(kube)
    first = wait_for(
        "snapshot of all examples",
        lambda: (
            (s := snapshot_secret(kube))
            and len(s[1].routes) == 3
            and len(s[1].backends) == 4
            and s[0]
        ),
    )

    # an edit of a route reaches the persisted snapshot
    demo = yaml.safe_load((EXAMPLES / "mock.yaml").read_text().split("---")[1])
    demo["spec"]["model"] = "demo-2"
    apply(kube, demo)
    second = wait_for(
        "the edit in the persisted snapshot",
        lambda: (
            (s := snapshot_secret(kube))
            and s[1].routes[f"{kube.namespace}/demo"].model == "demo-2"
            and s[0]
        ),
    )
    assert second != first

    # rotating the referenced key Secret changes the version; the new key is in it
    kube.kubectl("patch", "secret", "openai-key", "-p", '{"stringData": {"apiKey": "sk-rotated"}}')
    third = wait_for(
        "new version after rotation",
        lambda: (v := persisted_version(kube)) not in (first, second) and v,
    )
    _, snapshot = snapshot_secret(kube) or ("", None)
    assert snapshot is not None and snapshot.version == third
    key = snapshot.backends[f"{kube.namespace}/openai"].api_key
    assert key is not None and key.get_secret_value() == "sk-rotated"

    # an API key Secret (labelled) is picked up too, as a hash
    kube.kubectl("create", "secret", "generic", "team-key", "--from-literal=key=kk-123")
    kube.kubectl("label", "secret", "team-key", "kanal.dev/api-key=true")
    wait_for(
        "API key in the snapshot",
        lambda: (s := snapshot_secret(kube)) and any(k.secret == "team-key" for k in s[1].api_keys),
    )
    # an unrelated Secret changes nothing
    before = persisted_version(kube)
    kube.kubectl("create", "secret", "generic", "unrelated", "--from-literal=x=y")
    time.sleep(1.0)
    assert persisted_version(kube) == before

    # a backend whose Secret is missing is left out, with the reason on its status
    kube.kubectl("delete", "secret", "openai-key")
    wait_for(
        "openai SecretNotFound",
        lambda: (
            (c := condition(kanal_obj(kube, "modelbackends", "openai"), "Ready"))
            and c["reason"] == "SecretNotFound"
        ),
    )
    # ... and chat, which needs it, is left out too; demo keeps serving
    wait_for(
        "chat not Ready",
        lambda: (
            (c := condition(kanal_obj(kube, "llmroutes", "chat"), "Ready"))
            and c["reason"] == "BackendNotFound"
        ),
    )
    assert cond_status(kube, "llmroutes", "demo") == "True"


def test_delete_removes_children(kube: Kube, operators: Operators) -> None:
    operators.start()
    apply_examples(kube)
    wait_for("three ksvcs", lambda: len(ksvcs(kube)) == 3)
    wait_for(
        "local-llama in the snapshot",
        lambda: (s := snapshot_secret(kube)) and f"{kube.namespace}/local-llama" in s[1].backends,
    )
    kube.kubectl("delete", "modelbackend", "local-llama")
    kube.kubectl("delete", "llmroute", "summarize-ticket")
    wait_for(
        "children collected", lambda: [s["metadata"]["name"] for s in ksvcs(kube)] == ["fallback"]
    )
    wait_for(
        "snapshot without them",
        lambda: (
            (s := snapshot_secret(kube))
            and f"{kube.namespace}/local-llama" not in s[1].backends
            and f"{kube.namespace}/summarize-ticket" not in s[1].routes
        ),
    )
    # chat referenced local-llama: now left out, with the reason
    wait_for(
        "chat BackendNotFound",
        lambda: (
            (c := condition(kanal_obj(kube, "llmroutes", "chat"), "Ready"))
            and c["reason"] == "BackendNotFound"
        ),
    )

    # switching a backend from serving to an endpoint removes its Service
    fallback = kanal_obj(kube, "modelbackends", "fallback")
    fallback["spec"].pop("serving")
    fallback["spec"]["endpoint"] = "http://somewhere.test/v1"
    kube.kubectl(
        "replace",
        "-f",
        "-",
        input=yaml.safe_dump({k: fallback[k] for k in ("apiVersion", "kind", "metadata", "spec")}),
    )
    wait_for("fallback's Service removed", lambda: ksvcs(kube) == [])


def test_children_are_repaired(kube: Kube, operators: Operators) -> None:
    operators.start()
    apply(kube, served("llm", scale={"min": 0, "max": 2}))
    original = wait_for("ksvc llm", lambda: ksvc(kube, "llm"))

    # someone edits a field kanal owns: put back
    kube.kubectl(
        "patch",
        "ksvc",
        "llm",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"autoscaling.knative.dev/max-scale": "9"}}
                    }
                }
            }
        ),
    )
    wait_for(
        "max-scale put back",
        lambda: (
            (ksvc(kube, "llm") or {})["spec"]["template"]["metadata"]["annotations"][
                "autoscaling.knative.dev/max-scale"
            ]
            == "2"
        ),
    )
    # a label that is not kanal's stays
    kube.kubectl("label", "ksvc", "llm", "team=ml")
    time.sleep(0.5)
    assert (ksvc(kube, "llm") or {})["metadata"]["labels"]["team"] == "ml"

    # someone deletes it: created again
    kube.kubectl("delete", "ksvc", "llm")
    recreated = wait_for(
        "ksvc llm recreated",
        lambda: (
            (s := ksvc(kube, "llm")) and s["metadata"]["uid"] != original["metadata"]["uid"] and s
        ),
    )
    assert recreated["spec"]["template"] == original["spec"]["template"]


def test_invalid_input_is_a_permanent_false_condition(kube: Kube, operators: Operators) -> None:
    op = operators.start()
    # a valid ModelBackend name, but not a valid Knative Service name (dots)
    apply(kube, served("llama.v2"))
    reconciled = wait_for(
        "Reconciled False",
        lambda: (
            (c := condition(kanal_obj(kube, "modelbackends", "llama.v2"), "Reconciled"))
            and c["status"] == "False"
            and c
        ),
    )
    assert reconciled["reason"] == "InvalidName"
    assert cond_status(kube, "modelbackends", "llama.v2") == "False"
    assert ksvcs(kube) == []
    op.wait_log("not a valid name")
    # permanent: kopf does not retry it
    time.sleep(1.0)
    assert op.log().count("not a valid name") == 1


def test_restart_creates_no_duplicates_and_touches_nothing(
    kube: Kube, operators: Operators
) -> None:
    first = operators.start()
    apply_examples(kube)
    wait_for("three ksvcs", lambda: len(ksvcs(kube)) == 3)
    for name in ("local-llama", "fallback", "summarize-ticket-prompt"):
        play_knative(kube, name)
    wait_for(
        "local-llama Ready", lambda: cond_status(kube, "modelbackends", "local-llama") == "True"
    )
    wait_for("fallback Ready", lambda: cond_status(kube, "modelbackends", "fallback") == "True")
    wait_for(
        "function Ready",
        lambda: cond_status(kube, "llmroutes", "summarize-ticket", "FunctionReady") == "True",
    )
    time.sleep(1.0)  # let the last status writes land

    def state() -> dict[str, Any]:
        children = {
            s["metadata"]["name"]: (s["metadata"]["uid"], s["metadata"]["generation"])
            for s in ksvcs(kube)
        }
        owners = {
            (plural, o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for plural in ("modelbackends", "llmroutes")
            for o in kube.custom.list_namespaced_custom_object(
                "kanal.dev", "v1alpha1", kube.namespace, plural
            )["items"]
        }
        secret = kube.core.read_namespaced_secret("kanal-snapshot", kube.namespace)
        return {
            "children": children,
            "owners": owners,
            "snapshot": secret.metadata.resource_version,
        }

    before = state()
    assert len(before["children"]) == 3
    t0 = time.monotonic()
    assert first.stop() == 0, first.log()
    stop_seconds = time.monotonic() - t0
    assert stop_seconds < 10, f"SIGTERM took {stop_seconds:.1f}s"

    second = operators.start(name="op2")
    second.wait_log("routing snapshot", timeout=30)
    # 30 s of a running operator: nothing created, updated or rewritten
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert state() == before
        time.sleep(1.0)
    assert "created Knative Service" not in second.log()
    assert "updated Knative Service" not in second.log()
