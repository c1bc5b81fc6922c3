"""The committed CRDs are exactly what the API models generate, and are well-formed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kanal.api import KINDS
from kanal.cli import render_crds

CRD_DIR = Path(__file__).parents[2] / "crds"


def test_committed_crds_match_the_models() -> None:
    rendered = render_crds()
    committed = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert set(committed) == set(rendered), "run `kanal crds -o crds`"
    for name, text in rendered.items():
        assert committed[name] == text, (
            f"crds/{name} drifted from the models: run `kanal crds -o crds`"
        )


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_every_field_is_documented_and_typed(kind: Any) -> None:
    schema = kind.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = _walk(schema["properties"]["spec"], "spec") + _walk(
        schema["properties"]["status"], "status"
    )
    assert len(nodes) > 25
    undocumented = [
        p for p, n in nodes if not p.endswith(("[]", "{}")) and not n.get("description")
    ]
    assert undocumented == []
    untyped = [p for p, n in nodes if "type" not in n and not n.get("x-kubernetes-int-or-string")]
    assert untyped == []
    for path, node in nodes:
        for bound in ("minimum", "maximum"):
            if bound in node:
                assert type(node[bound]) in (int, float), f"{path}.{bound} = {node[bound]!r}"
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(flag, True) is True, f"{path}.{flag} must be a boolean"
    # structural: no JSON-Schema-only keywords survive
    text = yaml.safe_dump(schema)
    for keyword in ("$ref", "$defs", "title:", "const:", "- type: 'null'"):
        assert keyword not in text


def test_crd_names_short_names_columns_and_status() -> None:
    by_kind = {k.kind: k.crd() for k in KINDS}
    mb, lr = by_kind["ModelBackend"]["spec"], by_kind["LlmRoute"]["spec"]
    assert mb["names"]["shortNames"] == ["mb"] and lr["names"]["shortNames"] == ["lr"]
    for spec in (mb, lr):
        version = spec["versions"][0]
        assert spec["group"] == "kanal.dev" and version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert {"Ready", "Age"} <= set(names)
    assert "Provider" in [c["name"] for c in mb["versions"][0]["additionalPrinterColumns"]]
    assert "Model" in [c["name"] for c in lr["versions"][0]["additionalPrinterColumns"]]
