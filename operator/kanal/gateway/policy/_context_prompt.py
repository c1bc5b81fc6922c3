"""The upstream prompt of one turn: system messages, summary, the newest stored turns that
fit the budget, then the request's new messages. Pure functions, no I/O.

Stored messages form *units*: a message together with the tool results that answer it (an
assistant message with ``tool_calls`` and the ``tool`` messages after it), and units form
*turns*: a user message and everything up to the next user message. History is sent in whole
turns, newest first, so it always starts with a user message and a tool call is never
separated from its result. A unit whose calls lack results cannot be sent (providers refuse
it) and is left out — except the newest one when the request itself starts with those
results (the client ran the tools and now reports back): then its turn goes along even over
budget. Tool results that answer nothing stored are not sent either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kanal.gateway.policy._context_store import CONTINUATION_ROLES, History, StoredMessage
from kanal.gateway.tokens import estimate_messages

Json = dict[str, Any]

SYSTEM_ROLES = frozenset({"system", "developer"})
"""Sent first on every turn, never stored: the client (or the route) sends them each time."""
FRAMING = estimate_messages([{"role": "assistant"}])
"""Per-message overhead of the token estimates (role and framing)."""
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"


def message_tokens(message: Json) -> int:
    return estimate_messages([message])


def summary_message(summary: str) -> Json:
    return {"role": "system", "content": SUMMARY_PREFIX + summary}


SUMMARY_OVERHEAD = message_tokens(summary_message(""))
"""Tokens of the summary message around the summary text (added to the stored count)."""


_NO_CALLS: frozenset[str] = frozenset()
_ANONYMOUS_CALL = frozenset({""})


def tool_call_ids(message: Json) -> frozenset[str]:
    """Ids of the tool calls an assistant message makes (``function_call``: one pseudo-id)."""
    if message.get("role") != "assistant":
        return _NO_CALLS
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return (
            frozenset(
                str(c.get("id")) for c in calls if isinstance(c, dict) and c.get("id") is not None
            )
            or _ANONYMOUS_CALL
        )
    if message.get("function_call"):
        return _ANONYMOUS_CALL
    return _NO_CALLS


def _answers(message: Json) -> str:
    return "" if message.get("role") == "function" else str(message.get("tool_call_id") or "")


@dataclass(frozen=True, slots=True)
class Request:
    """A chat request split for the context policy."""

    head: list[Json]
    """System messages, first: the route's prompt.system, then the request's own."""
    new: list[Json]
    """The request's other messages, in order: sent after history, stored after the answer."""
    new_tokens: list[int]


def split_request(messages: list[Json], route_system: str | None) -> Request:
    head: list[Json] = []
    new: list[Json] = []
    for message in messages:
        (head if message.get("role") in SYSTEM_ROLES else new).append(message)
    if route_system and not any(m.get("content") == route_system for m in head):
        head.insert(0, {"role": "system", "content": route_system})
    return Request(head, new, [message_tokens(m) for m in new])


def history_budget(request: Request, max_tokens: int) -> int:
    """Tokens left for the summary and stored messages (may be negative)."""
    return max_tokens - estimate_messages(request.head) - sum(request.new_tokens)


@dataclass(slots=True)
class Unit:
    messages: list[StoredMessage]
    tokens: int
    calls: frozenset[str]
    """Tool call ids the unit's first message makes."""
    answered: set[str] = field(default_factory=set)
    complete: bool = True
    """Every call has its result (calls without ids: any result will do)."""

    def add_result(self, stored: StoredMessage, answer: str) -> None:
        self.messages.append(stored)
        self.tokens += stored.tokens
        self.answered.add(answer)
        self.complete = "" in self.calls or self.calls <= self.answered


def units(history: list[StoredMessage]) -> list[Unit]:
    """Group stored messages into units; tool results that answer nothing are left out."""
    out: list[Unit] = []
    for stored in history:
        if not stored.continuation:
            message = stored.message
            if message.get("role") == "assistant" and (
                message.get("tool_calls") or message.get("function_call")
            ):
                calls = tool_call_ids(message)
                out.append(Unit([stored], stored.tokens, calls, complete=False))
            else:
                out.append(Unit([stored], stored.tokens, _NO_CALLS))
            continue
        if not out:
            continue
        unit = out[-1]
        answer = _answers(stored.message)
        if not unit.calls or ("" not in unit.calls and answer not in unit.calls):
            continue  # an orphan result: nothing stored asked for it
        unit.add_result(stored, answer)
    return out


@dataclass(slots=True)
class Turn:
    """A user message and every unit after it until the next user message (the oldest
    turn of a session may lack its user message: it was trimmed)."""

    units: list[Unit]
    headless: bool

    @property
    def complete(self) -> bool:
        return all(u.complete for u in self.units)


def turns(stored: list[Unit]) -> list[Turn]:
    out: list[Turn] = []
    for unit in stored:
        is_user = unit.messages[0].message.get("role") == "user"
        if not out or is_user:
            out.append(Turn([unit], headless=not is_user))
        else:
            out[-1].units.append(unit)
    return out


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[Json]
    """What goes upstream."""
    new: list[Json]
    """The request's messages to store after the answer."""
    new_tokens: list[int]
    history_messages: int
    """Stored messages included."""
    tokens: int
    """Estimated prompt tokens (stored counts for history)."""


def _dedupe(request: Request, stored: list[Unit]) -> tuple[list[Json], list[int]]:
    """Drop assistant tool-call messages the client sent back although they are stored
    (SDK tool loops append the assistant message before the results): matched by call ids."""
    known = {call for unit in stored for call in unit.calls if call}
    if not known:
        return request.new, request.new_tokens
    new: list[Json] = []
    tokens: list[int] = []
    for message, count in zip(request.new, request.new_tokens, strict=True):
        calls = tool_call_ids(message)
        if calls and "" not in calls and calls <= known:
            continue
        new.append(message)
        tokens.append(count)
    return new, tokens


def _has_calls(message: Json) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _plain_start(history: list[StoredMessage], avail: int) -> tuple[int, int] | None:
    """The fast path when no tool call is in sight: (index where the newest whole turns
    that fit ``avail`` start, their tokens); None when tool messages need the unit logic."""
    start = len(history)
    total = turn = 0
    for index in range(len(history) - 1, -1, -1):
        stored = history[index]
        message = stored.message
        if stored.continuation or _has_calls(message):
            return None
        turn += stored.tokens
        if message.get("role") == "user":
            if total + turn > avail:
                break
            total += turn
            turn = 0
            start = index
    return start, total


def build_prompt(request: Request, history: History, max_tokens: int) -> Prompt:
    """System messages, the summary, the newest whole turns that fit ``max_tokens`` (with
    everything else counted), then the new messages."""
    head = list(request.head)
    summary_tokens = 0
    if history.summary:
        head.append(summary_message(history.summary))
        summary_tokens = history.summary_tokens
    if not any(m.get("role") in CONTINUATION_ROLES or _has_calls(m) for m in request.new):
        used = estimate_messages(request.head) + sum(request.new_tokens) + summary_tokens
        plain = _plain_start(history.messages, max_tokens - used)
        if plain is not None:
            start, taken = plain
            head.extend(s.message for s in history.messages[start:])
            head.extend(request.new)
            count = len(history.messages) - start
            return Prompt(head, request.new, request.new_tokens, count, used + taken)
    return _build_with_units(request, history, max_tokens, head, summary_tokens)


def _build_with_units(
    request: Request, history: History, max_tokens: int, head: list[Json], summary_tokens: int
) -> Prompt:
    stored = units(history.messages)
    new, new_tokens = _dedupe(request, stored)
    used = estimate_messages(request.head) + sum(new_tokens) + summary_tokens
    avail = max_tokens - used
    # the request answers the newest unit's calls: that unit (and its turn) must go along
    pending = (
        bool(new)
        and new[0].get("role") in CONTINUATION_ROLES
        and bool(stored)
        and bool(stored[-1].calls)
        and not stored[-1].complete
    )
    chosen: list[list[Unit]] = []
    taken = 0
    grouped = turns(stored)
    for index in range(len(grouped) - 1, -1, -1):
        turn = grouped[index]
        if pending and index == len(grouped) - 1:
            sent = [u for u in turn.units if u.complete or u is stored[-1]]
        elif turn.headless:
            break  # a fragment of a turn whose user message is gone: not sent
        else:
            sent = [u for u in turn.units if u.complete]  # calls without results cannot go
        tokens = sum(u.tokens for u in sent)
        if taken + tokens > avail and not (pending and index == len(grouped) - 1):
            break
        chosen.append(sent)
        taken += tokens
    messages = head
    count = 0
    for sent in reversed(chosen):
        for unit in sent:
            messages.extend(s.message for s in unit.messages)
            count += len(unit.messages)
    messages.extend(new)
    return Prompt(messages, new, new_tokens, count, used + taken)


def assistant_message(text: str, response: Json | None, finish_reason: str | None) -> Json | None:
    """The assistant turn to store: the first choice's message of a full response (content
    and tool calls), else the streamed text. None when the answer called tools that are not
    known (a streamed tool call: the client must send the call back with its results)."""
    message: Json = {"role": "assistant", "content": text}
    choices = (response or {}).get("choices") or []
    answered = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    if isinstance(answered, dict):
        content = answered.get("content")
        message["content"] = content if isinstance(content, str | list) else None
        calls = answered.get("tool_calls")
        if isinstance(calls, list) and calls:
            message["tool_calls"] = [
                {
                    "id": c.get("id"),
                    "type": c.get("type", "function"),
                    "function": dict(c.get("function") or {}),
                }
                for c in calls
                if isinstance(c, dict)
            ]
        if answered.get("function_call"):
            message["function_call"] = answered["function_call"]
    elif finish_reason in ("tool_calls", "function_call"):
        return None
    if message["content"] is None and not message.get("tool_calls"):
        message["content"] = ""
    return message
