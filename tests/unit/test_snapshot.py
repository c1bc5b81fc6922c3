"""The compiler: deterministic, resolves references, leaves bad routes out with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanal import manifests
from kanal.snapshot import Snapshot, compile_snapshot, hash_api_key

BASE = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: openai, namespace: team-a}
spec:
  provider: openai
  endpoint: https://api.openai.com/v1/
  credentials: {secretRef: {name: openai-key, key: apiKey}}
  models:
    - {name: gpt-4o-mini, contextWindow: 128000, pricing: {inputPerMTok: 0.15, outputPerMTok: 0.6}}
  timeouts: {connect: 2s, request: 90s}
---
apiVersion: v1
kind: Secret
metadata: {name: openai-key, namespace: team-a}
stringData: {apiKey: "sk-upstream-secret\\n"}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock, namespace: team-a}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192}, {name: mock-large, contextWindow: 8192}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat, namespace: team-a}
spec:
  model: chat
  backends:
    - {backendRef: {name: openai}, model: gpt-4o-mini, weight: 9}
    - {backendRef: {name: mock}, model: mock-small, weight: 1}
    - {backendRef: {name: mock}, model: mock-large, priority: 2, weight: 5}
  retry: {attempts: 3, backoff: 250ms}
  timeout: 45s
  access: {namespaces: [team-b]}
"""


def compile_text(tmp_path: Path, text: str) -> Snapshot:
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    loaded = manifests.load([path])
    assert loaded.errors == []
    return compile_snapshot(loaded.backends, loaded.routes, loaded.secrets)


def test_compiles_and_precomputes(tmp_path: Path) -> None:
    snapshot = compile_text(tmp_path, BASE)
    assert snapshot.problems == ()
    backend = snapshot.backends["team-a/openai"]
    assert backend.base_url == "https://api.openai.com/v1"
    assert (
        backend.api_key is not None and backend.api_key.get_secret_value() == "sk-upstream-secret"
    )
    assert backend.connect_timeout == 2.0 and backend.request_timeout == 90.0
    assert backend.models["gpt-4o-mini"].usd_per_output_token == pytest.approx(0.6e-6)
    route = snapshot.routes["team-a/chat"]
    assert [t.priority for t in route.tiers] == [0, 2]
    assert [(t.backend, t.weight) for t in route.tiers[0].targets] == [
        ("team-a/openai", 9),
        ("team-a/mock", 1),
    ]
    assert route.retry.attempts == 3 and route.retry.backoff == 0.25 and route.timeout == 45
    assert route.tenants == {"team-a", "team-b"}
    assert snapshot.by_tenant_model[("team-b", "chat")] is route
    assert ("team-c", "chat") not in snapshot.by_tenant_model


def test_version_is_deterministic_and_tracks_content(tmp_path: Path) -> None:
    first = compile_text(tmp_path, BASE)
    again = compile_text(tmp_path, BASE)
    assert first.version == again.version
    edited = compile_text(tmp_path, BASE.replace("timeout: 45s", "timeout: 46s"))
    assert edited.version != first.version
    rotated = compile_text(tmp_path, BASE.replace("sk-upstream-secret", "sk-rotated"))
    assert rotated.version != first.version  # a rotated key must reach the gateways


def test_secret_never_printed(tmp_path: Path) -> None:
    snapshot = compile_text(tmp_path, BASE)
    for text in (repr(snapshot), str(snapshot), snapshot.model_dump_json()):
        assert "sk-upstream-secret" not in text


def test_bad_route_is_left_out_with_reason_and_others_stay(tmp_path: Path) -> None:
    extra = """
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: broken, namespace: team-a}
spec:
  backends: [{backendRef: {name: ghost}, model: x}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: wrong-model, namespace: team-a}
spec:
  backends: [{backendRef: {name: mock}, model: gpt-5}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: zz-duplicate, namespace: team-a}
spec:
  model: chat
  backends: [{backendRef: {name: mock}, model: mock-small}]
"""
    snapshot = compile_text(tmp_path, BASE + extra)
    assert set(snapshot.routes) == {"team-a/chat"}
    problems = {p.id: (p.reason, p.message) for p in snapshot.problems}
    assert problems["team-a/broken"][0] == "BackendNotFound"
    assert "team-a/ghost" in problems["team-a/broken"][1]
    assert problems["team-a/wrong-model"][0] == "ModelNotFound"
    assert "(it has: mock-large, mock-small)" in problems["team-a/wrong-model"][1]
    assert problems["team-a/zz-duplicate"][0] == "ModelConflict"


def test_missing_secret_breaks_backend_and_its_routes_only(tmp_path: Path) -> None:
    text = BASE.replace("name: openai-key, namespace: team-a", "name: other, namespace: team-a")
    snapshot = compile_text(tmp_path, text)
    assert "team-a/openai" not in snapshot.backends
    assert "team-a/mock" in snapshot.backends
    reasons = {p.id: p.reason for p in snapshot.problems}
    assert reasons == {"team-a/openai": "SecretNotFound", "team-a/chat": "BackendNotFound"}


def test_own_route_wins_over_shared_one(tmp_path: Path) -> None:
    extra = """
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock, namespace: team-b}
spec: {provider: mock, models: [{name: mock-small, contextWindow: 8192}]}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat, namespace: team-b}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
"""
    snapshot = compile_text(tmp_path, BASE + extra)
    assert snapshot.by_tenant_model[("team-b", "chat")].id == "team-b/chat"
    assert snapshot.by_tenant_model[("team-a", "chat")].id == "team-a/chat"


def test_api_keys_kept_as_hashes(tmp_path: Path) -> None:
    keys = """
---
apiVersion: v1
kind: Secret
metadata: {name: caller, namespace: team-b, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-caller}
---
apiVersion: v1
kind: Secret
metadata: {name: unlabelled, namespace: team-b}
stringData: {key: sk-not-a-key}
"""
    snapshot = compile_text(tmp_path, BASE + keys)
    assert [(k.namespace, k.secret, k.sha256) for k in snapshot.api_keys] == [
        ("team-b", "caller", hash_api_key("sk-caller"))
    ]
    assert "sk-caller" not in snapshot.model_dump_json()


def test_serving_backend_gets_cluster_local_url(tmp_path: Path) -> None:
    text = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: llama, namespace: ml}
spec:
  provider: openai-compatible
  serving: {image: vllm}
  models: [{name: llama3, contextWindow: 8192}]
"""
    snapshot = compile_text(tmp_path, text)
    assert snapshot.backends["ml/llama"].base_url == "http://llama.ml.svc.cluster.local/v1"


def test_wire_round_trip_carries_credentials_and_checks_version(tmp_path: Path) -> None:
    from kanal.snapshot import from_bytes, to_bytes

    snapshot = compile_text(tmp_path, BASE)
    raw = to_bytes(snapshot)
    again = from_bytes(raw)
    assert again.version == snapshot.version
    key = again.backends["team-a/openai"].api_key
    assert key is not None and key.get_secret_value() == "sk-upstream-secret"
    tampered = raw.replace(b'"timeout":45.0', b'"timeout":46.0')
    assert tampered != raw
    with pytest.raises(ValueError, match="does not match"):
        from_bytes(tampered)
    with pytest.raises(ValueError, match="not JSON"):
        from_bytes(b"{nope")
    with pytest.raises(ValueError, match="schema"):
        from_bytes(b'{"schema_version": 99}')
