"""Status conditions in the usual Kubernetes shape, computed purely.

A condition keeps its ``lastTransitionTime`` while its status stays the same (a new reason
or message is not a transition), so writing the same verdict twice changes nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class Cond:
    """A condition as the operator decides it; times are added by :func:`merge_conditions`."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int | None = None
    """The generation the verdict is about; when None, the object's current generation."""

    def __post_init__(self) -> None:
        if self.status not in (TRUE, FALSE, UNKNOWN):
            raise ValueError(f"condition status must be True, False or Unknown: {self.status!r}")


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it (UTC, seconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of that type, if present."""
    return next((c for c in conditions or () if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == TRUE


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    desired: Sequence[Cond],
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions to write: ``desired``, in its order, with ``lastTransitionTime`` kept
    from ``existing`` where the status did not change, and ``now`` where it did. Condition
    types absent from ``desired`` are dropped (the operator owns every condition)."""
    out = []
    for cond in desired:
        before = find(existing, cond.type)
        if before is not None and before.get("status") == cond.status:
            since = before.get("lastTransitionTime") or now
        else:
            since = now
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": since,
        }
        observed = cond.observed_generation if cond.observed_generation is not None else generation
        if observed is not None:
            entry["observedGeneration"] = observed
        out.append(entry)
    return out


def summarize(type_: str, parts: Sequence[Cond], ready: Cond) -> Cond:
    """An aggregate condition (e.g. Ready): ``ready`` when every part is True; otherwise
    False if any part is False, else Unknown, with the first blocking part's reason and
    message."""
    blocking = [c for c in parts if c.status != TRUE]
    if not blocking:
        return Cond(type_, ready.status, ready.reason, ready.message, ready.observed_generation)
    status = FALSE if any(c.status == FALSE for c in blocking) else UNKNOWN
    first = next(c for c in blocking if c.status == status)
    return Cond(type_, status, first.reason, first.message)
