"""``GET /v1/usage``: the caller's namespace's usage, summed from the per-day aggregates.

Query parameters (all optional):

- ``group_by``: one or more of key, namespace, route, model, backend, day (comma-separated
  or repeated; default ``key``; ``group_by=`` with nothing gives totals only);
- ``start``, ``end``: UTC dates YYYY-MM-DD, both included (default: today; at most
  ``MAX_DAYS`` days);
- ``route``: only this route (``namespace/name``).

Answer: ``{"object": "usage.summary", "namespace", "start", "end", "group_by", "route",
"data": [{<group values>, requests, input_tokens, output_tokens, cached_input_tokens,
cached_output_tokens, cost_usd, cache_hits, errors, disconnects}], "totals": {...}}``.
See :mod:`kanal.gateway.telemetry._usage` for what is counted. Bad parameters: 400 in
OpenAI's error shape with ``param`` naming the parameter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kanal.gateway.errors import GatewayError
from kanal.gateway.stores import REDIS_ERRORS
from kanal.gateway.telemetry import USAGE_GROUPS as GROUPS
from kanal.gateway.telemetry import UsageSink

if TYPE_CHECKING:
    from multidict import MultiMapping

    from kanal.gateway.policy.base import Caller
    from kanal.gateway.service import Gateway

MAX_DAYS = 366
PARAMS = ("group_by", "start", "end", "route")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    group_by: tuple[str, ...]
    start: dt.date
    end: dt.date
    route: str | None = None


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, code="invalid_value", param=param)


def _date(value: str | None, param: str, default: dt.date) -> dt.date:
    if value is None or value == "":
        return default
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _bad(f"{param} must be a date as YYYY-MM-DD (UTC), not {value!r}", param) from None


def parse_query(query: MultiMapping[str], today: dt.date | None = None) -> UsageQuery:
    """The query of ``GET /v1/usage``; GatewayError 400 naming the bad parameter."""
    for name in query:
        if name not in PARAMS:
            raise _bad(f"unknown query parameter {name!r}; known: {', '.join(PARAMS)}", name)
    for name in ("start", "end", "route"):
        if len(query.getall(name, [])) > 1:
            raise _bad(f"{name} may be given once", name)
    group_by = _groups(query.getall("group_by")) if "group_by" in query else ("key",)
    today = today or dt.datetime.now(dt.UTC).date()
    start = _date(query.get("start"), "start", today)
    end = _date(query.get("end"), "end", start if "start" in query else today)
    if end < start:
        raise _bad(f"end ({end}) is before start ({start})", "end")
    if (end - start).days + 1 > MAX_DAYS:
        raise _bad(f"at most {MAX_DAYS} days at a time (start {start}, end {end})", "start")
    route = query.get("route") or None
    return UsageQuery(group_by, start, end, route)


def _groups(values: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in GROUPS:
                raise _bad(f"group_by {name!r} is not one of {', '.join(GROUPS)}", "group_by")
            if name not in out:
                out.append(name)
    return tuple(out)


def usage_sink(gateway: Gateway) -> UsageSink | None:
    return gateway.telemetry.find(UsageSink)


async def usage_summary(
    gateway: Gateway, caller: Caller, query: MultiMapping[str]
) -> dict[str, Any]:
    """The answer of ``GET /v1/usage`` for ``caller`` (its own namespace only)."""
    parsed = parse_query(query)
    sink = usage_sink(gateway)
    if sink is None:
        raise GatewayError(404, "usage events are not recorded by this gateway", code="unknown_url")
    try:
        return await sink.summary(
            caller.tenant, parsed.start, parsed.end, parsed.group_by, parsed.route
        )
    except REDIS_ERRORS:
        raise GatewayError(
            503,
            "usage cannot be read right now (the gateway's Redis is unreachable)",
            code="usage_unavailable",
            retry_after=1.0,
        ) from None
