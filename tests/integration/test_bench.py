"""The test bench itself: each test proves one piece is real and working."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from kubernetes import client as k8s

from harness import Kube

DEADLINE = 30.0


def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)


def get_ksvc(kube: Kube, name: str) -> dict[str, Any]:
    obj = kube.custom.get_namespaced_custom_object(
        "serving.knative.dev", "v1", kube.namespace, "services", name
    )
    return cast(dict[str, Any], obj)


def gone(read: Callable[[], object]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            read()
        except k8s.ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    return check


# -- control plane ---------------------------------------------------------------------------


def test_apiserver_version(kube: Kube) -> None:
    info = k8s.VersionApi(kube.api).get_code()
    assert info.git_version == "v1.36.3"
    assert (info.major, info.minor) == ("1", "36")


def test_kubectl_is_the_venvs_1_36(kube: Kube) -> None:
    out = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["minor"] == "36"
    assert out["serverVersion"]["gitVersion"] == "v1.36.3"


def test_kubectl_creates_and_gets_configmap_in_test_namespace(kube: Kube) -> None:
    kube.kubectl("create", "configmap", "greeting", "--from-literal=hello=world")
    got = json.loads(kube.kubectl("get", "configmap", "greeting", "-o", "json").stdout)
    assert got["metadata"]["namespace"] == kube.namespace
    assert got["data"] == {"hello": "world"}
    # The Python client sees the same object in the same namespace.
    cm = kube.core.read_namespaced_config_map("greeting", kube.namespace)
    assert cm.data == {"hello": "world"}
    # An explicit namespace flag wins over the fixture's.
    names = kube.kubectl("get", "configmaps", "-A", "-o", "name").stdout.split()
    assert "configmap/greeting" in names
    assert kube.kubectl("get", "configmap", "greeting", "-n", "default", check=False).returncode


def test_garbage_collector_deletes_dependents(kube: Kube) -> None:
    ns = kube.namespace
    owner = kube.core.create_namespaced_config_map(
        ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata
    ref = k8s.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    kube.core.create_namespaced_config_map(
        ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="child", owner_references=[ref]))
    )
    kube.core.delete_namespaced_config_map("owner", ns)
    eventually(
        gone(lambda: kube.core.read_namespaced_config_map("child", ns)),
        "garbage collector deleting the child of a deleted owner",
    )


def test_namespace_deletion_completes(kube: Kube) -> None:
    name = f"{kube.namespace[:50]}-gone"
    kube.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    kube.kubectl("-n", name, "create", "configmap", "content", "--from-literal=a=b")
    kube.core.delete_namespace(name)
    eventually(gone(lambda: kube.core.read_namespace(name)), f"namespace {name} going away")


def test_serviceaccount_token_controller_fills_token_secret(kube: Kube) -> None:
    kube.kubectl("create", "serviceaccount", "robot")
    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "name": "robot-token",
                    "annotations": {"kubernetes.io/service-account.name": "robot"},
                },
            }
        ),
    )

    def has_token() -> bool:
        data = kube.core.read_namespaced_secret("robot-token", kube.namespace).data or {}
        return {"token", "ca.crt", "namespace"} <= data.keys()

    eventually(has_token, "serviceaccount-token controller filling the token secret")


def test_knative_service_crd_and_status_patch(kube: Kube, knative_crd_installed: list[str]) -> None:
    assert knative_crd_installed == [
        "customresourcedefinition.apiextensions.k8s.io/services.serving.knative.dev"
    ]
    crd = kube.apiext.read_custom_resource_definition("services.serving.knative.dev")
    assert crd.status and crd.status.conditions
    established = [c for c in crd.status.conditions if c.type == "Established"]
    assert established and established[0].status == "True"

    ksvc: dict[str, Any] = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {
            "template": {"spec": {"containers": [{"image": "example.invalid/echo:1"}]}},
            "traffic": [{"latestRevision": True, "percent": 100}],
        },
    }
    # The schema is structural: kubectl's strict field validation knows spec's fields.
    bogus = {**ksvc, "spec": {**ksvc["spec"], "bogus": 1}}
    proc = kube.kubectl("apply", "-f", "-", input=json.dumps(bogus), check=False)
    assert 'unknown field "spec.bogus"' in proc.stderr
    kube.kubectl("apply", "-f", "-", input=json.dumps(ksvc))
    obj = get_ksvc(kube, "echo")
    assert obj["spec"]["template"]["spec"]["containers"][0]["image"] == "example.invalid/echo:1"

    url = f"http://echo.{kube.namespace}.example.com"
    status = {
        "status": {
            "observedGeneration": obj["metadata"]["generation"],
            "url": url,
            "address": {"url": f"http://echo.{kube.namespace}.svc.cluster.local"},
            "latestCreatedRevisionName": "echo-00001",
            "latestReadyRevisionName": "echo-00001",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Serving",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    kube.kubectl(
        "patch", "ksvc", "echo", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    obj = get_ksvc(kube, "echo")
    assert obj["status"]["url"] == url
    assert obj["status"]["conditions"][0]["status"] == "True"

    table = kube.kubectl("get", "kservice", "echo", "--no-headers").stdout.split()
    assert table[:2] == ["echo", url]
    assert table[-2:] == ["True", "Serving"]


def test_garbage_collector_knows_custom_resource_owners(
    kube: Kube, knative_crd_installed: list[str]
) -> None:
    """Installing CRDs restarts kube-controller-manager, so its GC tracks the new kinds at
    once instead of after its 30 s rediscovery (measured: 43 s without the restart)."""
    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": "owner"},
                "spec": {"template": {}},
            }
        ),
    )
    owner = get_ksvc(kube, "owner")
    ref = k8s.V1OwnerReference(
        api_version="serving.knative.dev/v1",
        kind="Service",
        name="owner",
        uid=owner["metadata"]["uid"],
    )
    kube.core.create_namespaced_config_map(
        kube.namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="child", owner_references=[ref])),
    )
    kube.custom.delete_namespaced_custom_object(
        "serving.knative.dev", "v1", kube.namespace, "services", "owner"
    )
    eventually(
        gone(lambda: kube.core.read_namespaced_config_map("child", kube.namespace)),
        "garbage collector deleting the child of a deleted Knative Service",
        timeout=15,
    )


def test_knative_status_is_validated(kube: Kube, knative_crd_installed: list[str]) -> None:
    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": "bad"},
                "spec": {"template": {}},
            }
        ),
    )
    bad = {"status": {"conditions": [{"status": "True"}]}}  # `type` is required
    proc = kube.kubectl(
        "patch",
        "ksvc",
        "bad",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
        check=False,
    )
    assert proc.returncode != 0
    assert "Required value" in proc.stderr


# -- redis -----------------------------------------------------------------------------------


def test_redis_set_get(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert r.set("greeting", "hello")
        assert r.get("greeting") == "hello"
    finally:
        r.close()


@pytest.mark.parametrize("run", ["first", "second"])
def test_redis_is_flushed_between_tests(redis_url: str, run: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert r.dbsize() == 0, "a previous test's keys leaked"
        r.set(f"leftover-{run}", "x")
    finally:
        r.close()


# -- helm ------------------------------------------------------------------------------------


def test_helm_version(helm_bin: Path) -> None:
    out = subprocess.run(
        [str(helm_bin), "version", "--short"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("v4.3.2"), out
