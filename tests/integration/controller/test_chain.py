"""The whole chain on the real API server: kubectl apply -> operator -> Knative Service ->
(the test plays Knative) -> snapshot over gRPC -> a `kanal gateway` process serves it;
edits reach it; the operator dies and gateways keep serving; a new gateway starts from the
persisted snapshot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distkit import GatewayProcess, free_ports
from opkit import Operators, kanal_obj, ksvc, wait_for

from fakes import FakeOpenAI
from harness import Kube

OBJECTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: llama}
spec:
  provider: openai-compatible
  serving: {image: vllm/vllm-openai:v0.6.3, scale: {min: 0, max: 2}}
  models: [{name: llama3, contextWindow: 8192}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat}
spec:
  backends: [{backendRef: {name: llama}, model: llama3}]
  retry: {attempts: 0}
  timeout: 5s
"""


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().serve_in_thread() as fake:
        yield fake


def play_knative_ready(kube: Kube, name: str, url: str) -> None:
    """What Knative's controller would write once the revision serves, at ``url``."""
    current = ksvc(kube, name)
    assert current is not None
    status = {
        "observedGeneration": int(current["metadata"]["generation"]),
        "url": url,
        "conditions": [{"type": "Ready", "status": "True", "reason": "", "message": ""}],
    }
    kube.kubectl(
        "patch",
        "ksvc",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_apply_to_served_and_operator_outage(
    kube: Kube, operators: Operators, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    (snapshot_port,) = free_ports(1)
    operator = operators.start(
        "--snapshot-port", str(snapshot_port), "--snapshot-host", "127.0.0.1"
    )
    kube.kubectl("apply", "-f", "-", input=OBJECTS)
    target = f"127.0.0.1:{snapshot_port}"
    tenant = ["--anonymous-tenant", kube.namespace]  # callers without keys, as the objects' tenant
    gateway = GatewayProcess(tmp_path, "gw1", target, anonymous=False, extra=tenant)
    gateways: list[GatewayProcess] = [gateway]
    try:
        # the Knative Service exists, but Knative has not made it Ready: the backend waits
        wait_for("the ksvc", lambda: ksvc(kube, "llama"))
        gateway.wait_for(lambda: gateway.version() is not None, "serves a snapshot")
        backend: dict[str, Any] = kanal_obj(kube, "modelbackends", "llama")
        ready = next(
            (c for c in backend.get("status", {}).get("conditions", []) if c["type"] == "Ready"),
            None,
        )
        assert ready is None or ready["status"] != "True"

        # play Knative: the revision serves at the fake upstream's address
        play_knative_ready(kube, "llama", upstream.root)
        wait_for(
            "backend Ready",
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in kanal_obj(kube, "modelbackends", "llama")["status"]["conditions"]
            ),
        )
        gateway.wait_for(lambda: gateway.chat("chat")[0] == 200, "answers through llama")
        assert upstream.requests and upstream.last.body["model"] == "llama3"

        # an edit reaches the running gateway
        kube.kubectl(
            "patch", "llmroute", "chat", "--type=merge", "-p", '{"spec":{"model":"chat2"}}'
        )
        gateway.wait_for(lambda: gateway.models() == ["chat2"], "serves the edit")

        # the operator dies: the gateway keeps serving
        operator.kill()
        assert gateway.chat("chat2")[0] == 200

        # a new gateway starts while the operator is down: it serves the persisted snapshot
        certs = kube.control_plane.certs
        assert certs is not None
        late = GatewayProcess(
            tmp_path,
            "gw2",
            target,
            anonymous=False,
            extra=tenant,
            kube_args=[
                "--kube-api-url",
                kube.control_plane.server,
                "--kube-ca-file",
                str(kube.control_plane.ca_path),
                "--kube-client-cert",
                str(certs.admin_cert),
                "--kube-client-key",
                str(certs.admin_key),
                "--snapshot-namespace",
                kube.namespace,
            ],
        )
        gateways.append(late)
        late.wait_for(lambda: late.version() is not None, "serves the persisted snapshot")
        assert late.version() == gateway.version()
        assert late.chat("chat2")[0] == 200
    finally:
        for each in gateways:
            each.stop()
