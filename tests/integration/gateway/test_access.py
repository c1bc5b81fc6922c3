"""Callers and access: API keys by label, namespaces as tenants, 401/403/404."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from gwkit import snapshot_from_yaml, threaded_gateway

OBJECTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock, namespace: team-a}
spec: {provider: mock, models: [{name: mock-small, contextWindow: 8192}]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: gold-only, namespace: team-a}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  access:
    apiKeySecretSelector: {matchLabels: {tier: gold}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: shared, namespace: team-a}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
  access: {namespaces: [team-b]}
---
apiVersion: v1
kind: Secret
metadata: {name: gold, namespace: team-a, labels: {kanal.dev/api-key: "true", tier: gold}}
stringData: {key: sk-gold}
---
apiVersion: v1
kind: Secret
metadata: {name: free, namespace: team-a, labels: {kanal.dev/api-key: "true", tier: free}}
stringData: {key: sk-free}
---
apiVersion: v1
kind: Secret
metadata: {name: b, namespace: team-b, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-team-b}
"""

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def base_url() -> object:
    with threaded_gateway(snapshot_from_yaml(OBJECTS), anonymous_tenant=None) as gw:
        yield gw.base_url


def client(base_url: object, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(base_url), api_key=key, max_retries=0)


def test_label_selector_admits_matching_keys(base_url: object) -> None:
    reply = client(base_url, "sk-gold").chat.completions.create(model="gold-only", messages=HELLO)
    assert reply.choices[0].message.content


def test_other_keys_get_403_naming_the_rule(base_url: object) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(base_url, "sk-free").chat.completions.create(model="gold-only", messages=HELLO)
    message = str(info.value)
    assert "LlmRoute team-a/gold-only access admits only API keys labelled tier=gold" in message
    assert "key:team-a/free" in message
    assert "sk-free" not in message
    assert info.value.code == "access_denied"


def test_namespaces_are_tenants(base_url: object) -> None:
    team_b = client(base_url, "sk-team-b")
    assert [m.id for m in team_b.models.list()] == ["shared"]
    assert team_b.chat.completions.create(model="shared", messages=HELLO).choices
    with pytest.raises(openai.NotFoundError):  # not shared with team-b: invisible, not 403
        team_b.chat.completions.create(model="gold-only", messages=HELLO)
    team_a = client(base_url, "sk-free")
    assert sorted(m.id for m in team_a.models.list()) == ["gold-only", "shared"]


def test_missing_and_wrong_keys_are_401(base_url: object) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(base_url, "sk-nope").models.list()
    assert info.value.code == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as raw:  # the SDK refuses to send no key
        urllib.request.urlopen(f"{base_url}/models", timeout=5)
    assert raw.value.code == 401
    assert json.load(raw.value)["error"]["code"] == "missing_api_key"
