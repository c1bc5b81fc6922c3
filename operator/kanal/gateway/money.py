"""Money as the gateway counts it: integer nano-USD (exact sums, no float drift), shown as
USD rounded to the nano-dollar. Budgets and usage events share it."""

from __future__ import annotations

NANO = 1_000_000_000
"""nano-USD per USD."""


def usd(nano: int) -> float:
    """nano-USD as USD."""
    return round(nano / NANO, 9)
