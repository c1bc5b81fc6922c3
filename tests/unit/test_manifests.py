"""Reading manifest files: every problem names file, object and field; nothing stops early."""

from __future__ import annotations

from pathlib import Path

from kanal import manifests

GOOD_SECRET = """
apiVersion: v1
kind: Secret
metadata: {name: openai-key}
stringData: {apiKey: sk-test}
"""


def test_examples_folders_are_valid() -> None:
    examples = Path(__file__).parents[2] / "examples"
    quickstart = manifests.load([examples / "quickstart", examples / "quickstart-openai"])
    assert quickstart.errors == []
    assert {r.metadata.name for r in quickstart.routes} == {"chat", "gpt", "haiku"}
    loaded = manifests.load([examples])
    assert loaded.errors == []
    assert {r.metadata.name for r in loaded.routes} >= {"chat", "demo", "summarize-ticket"}
    assert len(loaded.backends) >= 3


def test_all_errors_are_reported_with_file_object_and_field(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        """
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: r1, namespace: team-a}
spec: {backends: [{backendRef: {name: b}, model: m, weight: -2}]}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: b1}
spec: {provider: nope, models: [{name: m, contextWindow: 10}]}
"""
    )
    (tmp_path / "b.yml").write_text("kind: [unclosed\n")
    loaded = manifests.load([tmp_path])
    rendered = sorted(str(e) for e in loaded.errors)
    assert f"{tmp_path / 'a.yaml'}: LlmRoute team-a/r1: spec.backends[0].weight: " in rendered[0]
    assert (
        f"{tmp_path / 'a.yaml'}: ModelBackend default/b1: spec.provider: must be one of"
        in (rendered[1])
    )
    assert rendered[2].startswith(f"{tmp_path / 'b.yml'}: line 2: invalid YAML")
    assert len(rendered) == 3


def test_unquoted_on_key_gets_a_hint(tmp_path: Path) -> None:
    """YAML 1.1 (kubectl's too) reads `on:` as true; the error says how to fix it."""
    (tmp_path / "r.yaml").write_text(
        """
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: r}
spec:
  backends: [{backendRef: {name: b}, model: m}]
  retry: {on: [5xx]}
"""
    )
    loaded = manifests.load([tmp_path / "r.yaml"])
    assert [e.field for e in loaded.errors] == ["spec.retry.true"]
    assert '"on": [5xx]' in loaded.errors[0].message


def test_secrets_namespaces_and_unknown_kinds(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        GOOD_SECRET
        + """
---
apiVersion: v1
kind: Secret
metadata: {name: bad}
data: {apiKey: "not base64!"}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoutes
metadata: {name: typo}
"""
    )
    loaded = manifests.load([tmp_path])
    assert [s.metadata.name for s in loaded.secrets] == ["openai-key"]
    assert loaded.secrets[0].values() == {"apiKey": "sk-test"}
    assert len(loaded.namespaces) == 1
    messages = {(e.kind, e.field): e.message for e in loaded.errors}
    assert "not base64" in messages[("Secret", "data")]
    assert "not apps/v1 Deployment" in messages[("Deployment", "kind")]
    assert "unknown kanal kind" in messages[("LlmRoutes", "kind")]


def test_duplicate_objects_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text(GOOD_SECRET)
    (tmp_path / "2.yaml").write_text(GOOD_SECRET)
    loaded = manifests.load([tmp_path])
    assert len(loaded.secrets) == 1
    assert "defined twice" in loaded.errors[0].message
    assert str(tmp_path / "1.yaml") in loaded.errors[0].message


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        """
apiVersion: v1
kind: Secret
metadata: {name: k}
stringData: {apiKey: sk-very-secret}
bogus: {apiKey: sk-very-secret}
---
apiVersion: v1
kind: Secret
metadata: {name: k2}
data: {apiKey: "c2stdmVyeS1zZWNyZXQ=!!"}
"""
    )
    loaded = manifests.load([tmp_path])
    text = "\n".join(str(e) for e in loaded.errors)
    assert "sk-very-secret" not in text
    assert "c2stdmVyeS1zZWNyZXQ" not in text
