"""PLACEHOLDER while issue 4 is under construction: replaced whole by the cache policy."""

from __future__ import annotations

from kanal.gateway.policy.base import Policy


class CachePolicy(Policy):
    name = "cache"
