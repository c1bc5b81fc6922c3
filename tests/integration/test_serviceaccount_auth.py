"""Pods as callers: ServiceAccount tokens checked with TokenReview on the real API server.

The gateway authenticates to the API server with its own ServiceAccount token, bound to a
role that may only create TokenReviews — as the chart will grant it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gwkit import ThreadedGateway, snapshot_from_yaml, threaded_gateway
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

OBJECTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: mock, namespace: {ns}}}
spec: {{provider: mock, models: [{{name: mock-small, contextWindow: 8192}}]}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: builders, namespace: {ns}}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  access: {{serviceAccounts: [{ns}/builder]}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: open, namespace: {ns}}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
"""


def chat(gw: ThreadedGateway, token: str, model: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{gw.base_url}/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture
def cluster_callers(kube: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    ns = kube.namespace
    for account in ("kanal-gateway", "builder", "intruder", "unprivileged"):
        kube.kubectl("create", "serviceaccount", account)
    role = f"kanal-tokenreview-{ns}"
    kube.kubectl(
        "create",
        "clusterrole",
        role,
        "--verb=create",
        "--resource=tokenreviews.authentication.k8s.io",
    )
    kube.kubectl(
        "create",
        "clusterrolebinding",
        role,
        f"--clusterrole={role}",
        f"--serviceaccount={ns}:kanal-gateway",
    )
    tokens = {
        name: kube.kubectl("create", "token", name, "--duration=10m").stdout.strip()
        for name in ("kanal-gateway", "builder", "intruder", "unprivileged")
    }
    try:
        yield tokens
    finally:
        kube.kubectl("delete", "clusterrolebinding", role, "--wait=false", check=False)
        kube.kubectl("delete", "clusterrole", role, "--wait=false", check=False)


def _settings(kube: Any, token_file: Path) -> dict[str, Any]:
    return {
        "anonymous_tenant": None,
        "kube_api_url": kube.control_plane.server,
        "kube_ca_file": str(kube.control_plane.ca_path),
        "kube_token_file": str(token_file),
    }


def test_service_account_tokens_are_callers(
    kube: Any, cluster_callers: dict[str, str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(cluster_callers["kanal-gateway"])
    snapshot = snapshot_from_yaml(OBJECTS.format(ns=kube.namespace))
    with threaded_gateway(snapshot, **_settings(kube, token_file)) as gw:
        status, body = chat(gw, cluster_callers["builder"], "builders")
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].endswith("hi")

        status, body = chat(gw, cluster_callers["intruder"], "builders")
        assert status == 403
        assert f"admits only ServiceAccounts {kube.namespace}/builder" in body["error"]["message"]
        assert f"sa:{kube.namespace}/intruder" in body["error"]["message"]

        status, _ = chat(gw, cluster_callers["intruder"], "open")  # same tenant, no rule
        assert status == 200

        forged = cluster_callers["builder"][:-4] + "AAAA"  # signature no longer matches
        status, body = chat(gw, forged, "open")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"

        with grpc.insecure_channel(gw.grpc_target) as channel:
            reply = pb_grpc.GatewayStub(channel).Chat(
                pb.ChatRequest(
                    model="builders", messages=[pb.ChatMessage(role="user", content="x")]
                ),
                metadata=(("authorization", f"Bearer {cluster_callers['builder']}"),),
                timeout=10,
            )
            assert reply.choices[0].message.content


def test_gateway_without_tokenreview_permission_says_503(
    kube: Any, cluster_callers: dict[str, str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(cluster_callers["unprivileged"])  # not bound to the role
    snapshot = snapshot_from_yaml(OBJECTS.format(ns=kube.namespace))
    with threaded_gateway(snapshot, **_settings(kube, token_file)) as gw:
        status, body = chat(gw, cluster_callers["builder"], "open")
        assert status == 503
        assert body["error"]["code"] == "token_review_unavailable"
        assert cluster_callers["builder"] not in json.dumps(body)
