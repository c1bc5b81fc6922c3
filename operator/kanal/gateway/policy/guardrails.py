"""Guardrails (``LlmRoute.guardrails``): checks and rewrites of the input before any upstream
call. It is the first policy of the pipeline, so everything after it — context, cache,
limits, the upstream — sees only what it let through.

In this order:

1. ``maxInputTokens``: the request's estimated prompt tokens (the gateway's offline
   estimate, :mod:`kanal.gateway.tokens`) over the limit → 400 ``input_too_long`` with
   ``param`` ``messages`` / ``prompt`` / ``input``.
2. ``block``: the first pattern (in list order) that matches any input text → 400
   ``blocked_by_guardrails`` naming the rule (``guardrails.block[1]``), never the pattern
   or the matched text.
3. ``redact``: matches of the configured PII classes are replaced by
   ``[REDACTED:<class>]`` in a new body (the caller's objects are never mutated), and the
   response header ``x-kanal-redacted`` lists the classes that matched, in the order of
   the API's class list (``email,phone,credit-card,ssn,ip-address,iban``).

Input texts are what the caller wrote: every chat message's string content and the
``text`` of its content parts (all roles: callers send the history too), the completion
``prompt`` (string or list of strings) and the embeddings ``input`` (string or list of
strings; token arrays carry no text). Tool-call arguments are not scanned.

Block patterns are compiled once per route and snapshot (:meth:`GuardrailsPolicy.rules`);
the PII patterns once per process (:mod:`._guardrails_pii`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kanal.api.llmroute import Guardrails
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy._guardrails_pii import CLASSES, Detector, detectors_for, redact
from kanal.gateway.policy.base import Call, Json, Policy
from kanal.gateway.tokens import estimate_prompt
from kanal.snapshot import RouteConfig, Snapshot

if TYPE_CHECKING:
    from kanal.gateway.stores import Stores

HEADER = "x-kanal-redacted"
_PARAM = {"chat": "messages", "completion": "prompt", "embeddings": "input"}

__all__ = ["HEADER", "GuardrailsPolicy", "Rules", "input_texts", "redact_body"]


@dataclass(frozen=True, slots=True)
class Rules:
    """A route's guardrails, compiled."""

    source: Guardrails
    max_input_tokens: int | None
    block: tuple[re.Pattern[str], ...]
    redact: tuple[Detector, ...]

    @classmethod
    def compile(cls, guardrails: Guardrails) -> Rules:
        return cls(
            source=guardrails,
            max_input_tokens=guardrails.max_input_tokens,
            block=tuple(re.compile(p) for p in guardrails.block or ()),
            redact=detectors_for(guardrails.redact or ()),
        )


def _part_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def input_texts(op: str, body: Json) -> Iterator[str]:
    """Every caller-written text of a request body (see the module docs)."""
    if op == "chat":
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                yield from _part_texts(message.get("content"))
        return
    value = body.get(_PARAM[op])
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, str))


def _redact_content(content: Any, detectors: tuple[Detector, ...], found: set[str]) -> Any:
    if isinstance(content, str):
        return redact(content, detectors, found)
    if not isinstance(content, list):
        return content
    parts: list[Any] | None = None
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            continue
        text = redact(part["text"], detectors, found)
        if text is not part["text"]:
            if parts is None:
                parts = list(content)
            parts[index] = {**part, "text": text}
    return content if parts is None else parts


def _redact_list(values: list[Any], detectors: tuple[Detector, ...], found: set[str]) -> Any:
    out: list[Any] | None = None
    for index, value in enumerate(values):
        if isinstance(value, str):
            text = redact(value, detectors, found)
            if text is not value:
                if out is None:
                    out = list(values)
                out[index] = text
    return values if out is None else out


def redact_body(op: str, body: Json, detectors: tuple[Detector, ...], found: set[str]) -> Json:
    """``body`` with PII replaced: a new dict sharing every unchanged part, or ``body``
    itself when nothing matched. Matched classes are added to ``found``."""
    if not detectors:
        return body
    if op == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return body
        new_messages: list[Any] | None = None
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            new_content = _redact_content(content, detectors, found)
            if new_content is not content:
                if new_messages is None:
                    new_messages = list(messages)
                new_messages[index] = {**message, "content": new_content}
        return body if new_messages is None else {**body, "messages": new_messages}
    field = _PARAM[op]
    value = body.get(field)
    if isinstance(value, str):
        new_value: Any = redact(value, detectors, found)
    elif isinstance(value, list):
        new_value = _redact_list(value, detectors, found)
    else:
        return body
    return body if new_value is value else {**body, field: new_value}


class GuardrailsPolicy(Policy):
    name = "guardrails"

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores)
        self._rules: dict[str, Rules] = {}
        self._rules_of: Snapshot | None = None

    def enabled(self, route: RouteConfig) -> bool:
        g = route.guardrails
        return g is not None and bool(g.redact or g.block or g.max_input_tokens)

    def rules(self, route: RouteConfig) -> Rules:
        """The route's compiled rules: compiled on first use per route and snapshot, then
        reused (a route object from an older snapshot gets its own, still correct, rules)."""
        assert route.guardrails is not None
        snapshot = self.gateway.runtime.snapshot if self.gateway is not None else None
        if snapshot is not self._rules_of:
            self._rules, self._rules_of = {}, snapshot
        rules = self._rules.get(route.id)
        if rules is None or rules.source is not route.guardrails:
            rules = Rules.compile(route.guardrails)
            self._rules[route.id] = rules
        return rules

    async def before(self, call: Call) -> Json | None:
        rules = self.rules(call.route)
        param = _PARAM[call.op]
        limit = rules.max_input_tokens
        if limit is not None:
            tokens = call.estimated_prompt_tokens or estimate_prompt(call.op, call.body)
            if tokens > limit:
                raise GatewayError(
                    400,
                    f"the input is about {tokens} tokens; LlmRoute {call.route.id} accepts at "
                    f"most {limit} (guardrails.maxInputTokens)",
                    code="input_too_long",
                    param=param,
                )
        if rules.block:
            texts = tuple(input_texts(call.op, call.body))
            for index, pattern in enumerate(rules.block):
                if any(pattern.search(text) for text in texts):
                    raise GatewayError(
                        400,
                        f"the input was blocked by guardrails.block[{index}] of LlmRoute "
                        f"{call.route.id}",
                        code="blocked_by_guardrails",
                        param=param,
                    )
        if rules.redact:
            found: set[str] = set()
            call.body = redact_body(call.op, call.body, rules.redact, found)
            if found:
                call.headers[HEADER] = ",".join(c for c in CLASSES if c in found)
        return None
