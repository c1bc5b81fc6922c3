"""Reads manifest files (the very YAML one would ``kubectl apply``) into typed objects.

Every problem is reported with the file, the object and the field, so a person can find
and fix it; loading never stops at the first error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kanal.api import RESOURCE_MODELS, LlmRoute, ModelBackend, Namespace, Secret

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

_YAML11_HINT = (
    "unknown field; YAML reads an unquoted on/off/yes/no key as a boolean, as kubectl "
    'does too: quote it, e.g. "on": [5xx]'
)
Manifest = ModelBackend | LlmRoute | Secret | Namespace
_CORE_MODELS: dict[str, type[Secret] | type[Namespace]] = {"Secret": Secret, "Namespace": Namespace}


@dataclass(frozen=True)
class ManifestError:
    """One problem in one object of one file."""

    file: str
    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        where = " ".join(part for part in (self.kind, self.name) if part)
        location = f"{self.file}: {where}" if where else self.file
        return (
            f"{location}: {self.field}: {self.message}"
            if self.field
            else f"{location}: {self.message}"
        )


@dataclass
class Manifests:
    """The objects read from a set of files, and what was wrong with the rest."""

    backends: list[ModelBackend] = field(default_factory=list)
    routes: list[LlmRoute] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        counts = (
            (len(self.backends), "ModelBackend"),
            (len(self.routes), "LlmRoute"),
            (len(self.secrets), "Secret"),
            (len(self.namespaces), "Namespace"),
        )
        listed = ", ".join(f"{n} {kind}" for n, kind in counts if n)
        return f"{listed or 'no objects'} in {len(self.files)} file(s)"


def expand(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly, and the manifest files in folders (sorted; like ``kubectl
    apply -f DIR``, sub-folders are not read)."""
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            yield from sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES
            )
        else:
            yield path


def load(paths: Iterable[str | Path]) -> Manifests:
    """Reads and validates every object in ``paths``."""
    result = Manifests()
    seen: dict[tuple[str, str, str], str] = {}
    for path in expand(paths):
        result.files.append(path)
        for doc in _documents(path, result):
            obj = _validate(path, doc, result)
            if obj is None:
                continue
            key = (obj.kind, obj.metadata.namespace or "default", obj.metadata.name)
            if key in seen:
                result.errors.append(
                    ManifestError(
                        str(path),
                        key[0],
                        f"{key[1]}/{key[2]}",
                        "metadata.name",
                        f"defined twice (first in {seen[key]})",
                    )
                )
                continue
            seen[key] = str(path)
            match obj:
                case ModelBackend():
                    result.backends.append(obj)
                case LlmRoute():
                    result.routes.append(obj)
                case Secret():
                    result.secrets.append(obj)
                case Namespace():
                    result.namespaces.append(obj)
    return result


def _documents(path: Path, result: Manifests) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as err:
        result.errors.append(ManifestError(str(path), "", "", "", f"cannot read: {err.strerror}"))
        return
    try:
        # YAML 1.1 as kubectl reads it (sigs.k8s.io/yaml): the same file means the same here.
        docs = [_string_keys(doc) for doc in yaml.safe_load_all(text)]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        result.errors.append(
            ManifestError(str(path), "", "", "", f"{where}invalid YAML: {problem}")
        )
        return
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            result.errors.append(
                ManifestError(str(path), "", f"document {index + 1}", "", "is not a mapping")
            )
            continue
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            yield from (item for item in doc["items"] if isinstance(item, dict))
        else:
            yield doc


def _validate(path: Path, doc: dict[str, Any], result: Manifests) -> Manifest | None:
    kind = str(doc.get("kind") or "")
    api_version = str(doc.get("apiVersion") or "")
    meta = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
    model: type[Manifest] | None
    if api_version.startswith("kanal.dev/") or kind in RESOURCE_MODELS:
        model = RESOURCE_MODELS.get(kind)
        if model is None:
            known = ", ".join(RESOURCE_MODELS)
            result.errors.append(
                ManifestError(str(path), kind, name, "kind", f"unknown kanal kind (known: {known})")
            )
            return None
    else:
        model = _CORE_MODELS.get(kind)
        if model is None or api_version != "v1":
            result.errors.append(
                ManifestError(
                    str(path),
                    kind,
                    name,
                    "kind",
                    f"kanal reads ModelBackend, LlmRoute, Secret and Namespace, not "
                    f"{api_version or '?'} {kind or '(no kind)'}",
                )
            )
            return None
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        for detail in err.errors():
            ctx = detail.get("ctx") or {}
            location = _dotted(detail["loc"]) + str(ctx.get("field_path", ""))
            message = detail["msg"]
            if detail["type"] in ("literal_error", "enum") and "expected" in ctx:
                message = f"must be one of {ctx['expected']}"
            if detail["type"] == "extra_forbidden":
                last = detail["loc"][-1] if detail["loc"] else ""
                message = _YAML11_HINT if last in ("true", "false") else "unknown field"
            result.errors.append(ManifestError(str(path), kind, name, location, message))
        return None


def _string_keys(node: Any) -> Any:
    """Mapping keys as JSON has them: kubectl turns a boolean key into "true"/"false"."""
    if isinstance(node, dict):
        return {_json_key(k): _string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_string_keys(item) for item in node]
    return node


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return key if isinstance(key, str) else str(key)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
