"""Condition helpers: transitions, times, aggregation."""

from __future__ import annotations

import re

import pytest

from kanal.controller.conditions import (
    Cond,
    find,
    is_true,
    merge_conditions,
    now_rfc3339,
    summarize,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_conditions_get_now_and_the_generation() -> None:
    out = merge_conditions(None, [Cond("Ready", "True", "Ok", "fine")], generation=3, now=T0)
    assert out == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Ok",
            "message": "fine",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]


def test_time_is_kept_while_the_status_stays_even_if_reason_changes() -> None:
    first = merge_conditions(None, [Cond("Ready", "False", "A", "a")], generation=1, now=T0)
    again = merge_conditions(first, [Cond("Ready", "False", "B", "b")], generation=2, now=T1)
    assert again[0]["lastTransitionTime"] == T0
    assert (again[0]["reason"], again[0]["message"], again[0]["observedGeneration"]) == (
        "B",
        "b",
        2,
    )
    flipped = merge_conditions(again, [Cond("Ready", "True", "C", "c")], generation=2, now=T1)
    assert flipped[0]["lastTransitionTime"] == T1
    # the same verdict twice is the same list: writing it changes nothing
    assert merge_conditions(flipped, [Cond("Ready", "True", "C", "c")], generation=2, now="x") == (
        flipped
    )


def test_order_follows_desired_and_foreign_types_are_dropped() -> None:
    existing = [{"type": "Old", "status": "True"}, {"type": "B", "status": "True"}]
    out = merge_conditions(
        existing,
        [Cond("A", "True", "r", "m"), Cond("B", "True", "r", "m", observed_generation=1)],
        generation=2,
        now=T0,
    )
    assert [c["type"] for c in out] == ["A", "B"]
    assert out[1]["observedGeneration"] == 1


def test_status_values_are_checked() -> None:
    with pytest.raises(ValueError):
        Cond("Ready", "yes", "r", "m")


def test_summarize() -> None:
    ok = Cond("Ready", "True", "Ready", "all good")
    parts = [Cond("A", "True", "a", "a")]
    assert summarize("Ready", parts, ok) == ok
    unknown = summarize("Ready", [*parts, Cond("B", "Unknown", "Wait", "waiting")], ok)
    assert (unknown.status, unknown.reason) == ("Unknown", "Wait")
    false = summarize(
        "Ready",
        [Cond("B", "Unknown", "Wait", "w"), Cond("C", "False", "Broken", "b")],
        ok,
    )
    assert (false.status, false.reason, false.message) == ("False", "Broken", "b")


def test_find_and_now() -> None:
    conds = [{"type": "Ready", "status": "True"}]
    assert find(conds, "Ready") == conds[0]
    assert find(None, "Ready") is None
    assert is_true(conds, "Ready")
    assert not is_true(conds, "Other")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_rfc3339())
