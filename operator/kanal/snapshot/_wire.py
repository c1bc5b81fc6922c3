"""The snapshot as bytes: what the operator sends to gateways and persists.

Unlike every printable form of a snapshot, this one carries the upstream credentials, so
it only ever travels over the operator->gateway stream and into a Kubernetes Secret.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import SecretStr

from kanal.snapshot._model import SCHEMA_VERSION, Snapshot

SNAPSHOT_SECRET = "kanal-snapshot"
"""Name of the Secret (in the operator's namespace) holding the last good snapshot."""
SNAPSHOT_KEY = "snapshot.json"
"""Its data key."""
VERSION_ANNOTATION = "kanal.dev/snapshot-version"
"""Annotation on that Secret naming the version it holds."""


def to_bytes(snapshot: Snapshot) -> bytes:
    data: dict[str, Any] = snapshot.model_dump(mode="json")
    for backend_id, backend in snapshot.backends.items():
        key = backend.api_key
        data["backends"][backend_id]["api_key"] = key.get_secret_value() if key else None
    data["version"] = snapshot.version
    return orjson.dumps(data)


def from_bytes(raw: bytes) -> Snapshot:
    """Parse and validate; raises ValueError on anything malformed or of another schema."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"snapshot is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"snapshot schema is not {SCHEMA_VERSION}")
    claimed = data.pop("version", None)
    for backend in (data.get("backends") or {}).values():
        if backend.get("api_key") is not None:
            backend["api_key"] = SecretStr(backend["api_key"])
    snapshot = Snapshot.model_validate(data)
    if claimed is not None and claimed != snapshot.version:
        raise ValueError(f"snapshot version {claimed} does not match its content")
    return snapshot
