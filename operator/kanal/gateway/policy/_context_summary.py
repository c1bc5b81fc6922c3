"""``strategy: summarize``: which oldest turns to fold into the running summary, and the
request that asks the summarizer model to do it. Pure functions, no I/O.

The words of that request come from :mod:`kanal.prompts`, which the summarize function
(``functions/summarize``, the same fold out of process) uses too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kanal import prompts
from kanal.gateway.policy._context_prompt import turns, units
from kanal.gateway.policy._context_store import History, StoredMessage

Json = dict[str, Any]

INSTRUCTIONS = prompts.SUMMARY_INSTRUCTIONS


@dataclass(frozen=True, slots=True)
class FoldPlan:
    messages: list[StoredMessage]
    """Oldest messages to fold, whole units."""
    through_seq: int
    tokens: int


def needs_fold(tokens: int, summary_tokens: int, max_tokens: int) -> bool:
    """History (summary included) no longer fits the budget."""
    return tokens + summary_tokens > max_tokens


def plan_fold(history: History, keep_tokens: int) -> FoldPlan | None:
    """The oldest whole turns to fold so the remaining messages fit ``keep_tokens``. Never
    the newest turn: the conversation's current state stays verbatim, and its tool calls may
    still be waiting for their results (in older turns such calls were abandoned)."""
    grouped = turns(units(history.messages))
    remaining = sum(u.tokens for turn in grouped for u in turn.units)
    folded: list[StoredMessage] = []
    tokens = 0
    for turn in grouped[:-1]:
        if remaining <= keep_tokens:
            break
        turn_tokens = sum(u.tokens for u in turn.units)
        folded.extend(s for u in turn.units for s in u.messages)
        tokens += turn_tokens
        remaining -= turn_tokens
    if not folded:
        return None
    # everything up to the next turn goes: orphan tool results included
    next_index = history.messages.index(folded[-1]) + 1
    through = folded[-1].seq
    for stored_message in history.messages[next_index:]:
        if stored_message.message.get("role") == "user":
            break
        through = stored_message.seq
    return FoldPlan(folded, through, tokens)


def transcript(messages: list[StoredMessage]) -> str:
    return prompts.transcript(stored.message for stored in messages)


def summarizer_body(
    model: str, summary: str | None, messages: list[StoredMessage], max_words: int
) -> Json:
    """The chat request for the summarizer (OpenAI shape; the backend's adapter translates)."""
    return {
        "model": model,
        "messages": prompts.summary_messages(summary, (s.message for s in messages), max_words),
        "max_tokens": max_words,
        "temperature": 0,
    }
