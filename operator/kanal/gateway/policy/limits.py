"""PLACEHOLDER while issue 4 is under construction: replaced whole by the limits policy."""

from __future__ import annotations

from kanal.gateway.policy.base import Policy


class LimitsPolicy(Policy):
    name = "limits"
