"""The `kanal` command as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

import kanal


def kanal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    result = kanal_cli("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kanal {kanal.__version__}"


def test_crds_prints_both_crds() -> None:
    result = kanal_cli("crds")
    assert result.returncode == 0
    docs = list(yaml.safe_load_all(result.stdout))
    assert sorted(d["metadata"]["name"] for d in docs) == [
        "llmroutes.kanal.dev",
        "modelbackends.kanal.dev",
    ]


def test_crds_writes_files(tmp_path: Path) -> None:
    result = kanal_cli("crds", "-o", str(tmp_path))
    assert result.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "llmroutes.kanal.dev.yaml",
        "modelbackends.kanal.dev.yaml",
    ]


def test_validate_ok_on_examples() -> None:
    examples = Path(__file__).parents[2] / "examples"
    result = kanal_cli("validate", "-f", str(examples))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_validate_names_file_object_and_field_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: llama, namespace: team-b}
spec:
  provider: openai-compatible
  serving: {image: x, scale: {min: 4, max: 1}}
  models: [{name: llama3, contextWindow: 8192}]
"""
    )
    result = kanal_cli("validate", "-f", str(bad))
    assert result.returncode == 1
    assert (
        f"{bad}: ModelBackend team-b/llama: spec.serving.scale.min: "
        "serving.scale.min must not exceed serving.scale.max"
    ) in result.stderr


def test_validate_with_no_files_fails(tmp_path: Path) -> None:
    result = kanal_cli("validate", "-f", str(tmp_path))
    assert result.returncode == 1
    assert "no manifest files" in result.stderr


def test_unbuilt_commands_say_so_and_fail() -> None:
    from kanal.cli import NOT_BUILT

    for command in NOT_BUILT:
        result = kanal_cli(command, "-f", "examples")
        assert result.returncode == 2
        assert "not built yet" in result.stderr


def test_validate_warns_about_unresolved_references() -> None:
    examples = Path(__file__).parents[2] / "examples"
    result = kanal_cli("validate", "-f", str(examples))
    assert result.returncode == 0
    # the OpenAI key Secret is created with kubectl, not shipped in examples/
    assert "warning: ModelBackend default/openai: SecretNotFound" in result.stderr
