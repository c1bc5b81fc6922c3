"""The API models refuse every bad object offline, naming the same field the API server names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from api_cases import CASES, BadCase, hosted_backend, route, served_backend
from kanal import manifests
from kanal.api import LlmRoute, ModelBackend, parse_duration


def _load_one(tmp_path: Path, obj: dict[str, object]) -> manifests.Manifests:
    path = tmp_path / "obj.yaml"
    path.write_text(yaml.safe_dump(obj))
    return manifests.load([path])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_object_refused_offline_naming_the_field(tmp_path: Path, case: BadCase) -> None:
    loaded = _load_one(tmp_path, case.build())
    assert loaded.errors, f"{case.id} was accepted offline"
    fields = {e.field: e.message for e in loaded.errors}
    assert case.field in fields, f"{case.id}: expected field {case.field}, got {fields}"
    assert case.says in fields[case.field]


@pytest.mark.parametrize("base", [hosted_backend, served_backend, route])
def test_base_objects_are_valid(tmp_path: Path, base: object) -> None:
    assert callable(base)
    loaded = _load_one(tmp_path, base())
    assert loaded.errors == []


def test_cases_cover_every_cel_rule() -> None:
    """Each Rule declared on a model has a bad object exercising it."""
    from kanal.api import KINDS
    from kanal.api._crd import structural_schema

    def rules_in(node: object) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            found += [v["message"] for v in node.get("x-kubernetes-validations", [])]
            for value in node.values():
                found += rules_in(value)
        elif isinstance(node, list):
            for value in node:
                found += rules_in(value)
        return found

    messages = set()
    for kind in KINDS:
        messages.update(rules_in(structural_schema(kind.spec)))
    exercised = {m for m in messages if any(c.says in m for c in CASES if c.kind == "cel")}
    assert messages - exercised == set()
    assert len(messages) >= 12


def test_defaults_are_applied_like_the_api_server() -> None:
    obj = route()
    obj["spec"]["retry"] = {}
    obj["spec"]["context"] = {}
    parsed = LlmRoute.model_validate(obj)
    assert parsed.spec.backends[1].weight == 1
    assert parsed.spec.retry is not None and parsed.spec.retry.on == [
        "5xx",
        "timeout",
        "rate-limited",
        "connect-error",
    ]
    assert parsed.spec.context is not None and parsed.spec.context.max_tokens == 4000
    backend = ModelBackend.model_validate(served_backend())
    assert backend.spec.serving is not None and backend.spec.serving.port == 8080


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("30s", 30), ("5m", 300), ("24h", 86400), ("1h30m", 5400), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "1d", "-1s", "s"])
def test_parse_duration_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_invalid_block_regex_is_refused_offline(tmp_path: Path) -> None:
    """The API server cannot check a regex; the offline validator does."""
    obj = route()
    obj["spec"]["guardrails"] = {"block": ["ok", "(unclosed"]}
    loaded = _load_one(tmp_path, obj)
    assert [e.field for e in loaded.errors] == ["spec.guardrails.block"]
    assert "guardrails.block[1] is not a valid regex" in loaded.errors[0].message
