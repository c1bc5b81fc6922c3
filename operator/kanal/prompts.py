"""The texts kanal itself sends to models, as pure functions (no I/O, no kanal layer above
the API): an ``LlmRoute.prompt`` template rendered with a caller's variables, and the request
that folds conversation turns into a running summary.

Used by the prompt and summarize functions (``functions/``) and by the gateway's in-process
context summarizer, so both forms of the fold send the model the very same words.

**Templates.** A placeholder is ``{{name}}`` (spaces inside the braces allowed:
``{{ name }}``), ``name`` a variable name as ``prompt.variables[].name`` allows it
(``[A-Za-z_][A-Za-z0-9_]*``). Anything else in braces is text. The variables a prompt takes
are the ones it declares and the ones its template uses; each is *required* unless declared
with a ``default``. A caller's value is a string; a number or a boolean is written as JSON
writes it (``3``, ``2.5``, ``true``); anything else is refused, and so are names the prompt
does not take (a typo would otherwise silently fall back to a default). Substitution is one
pass: a value that itself contains ``{{...}}`` is inserted verbatim, never expanded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kanal.api.llmroute import Prompt

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class VariableError(ValueError):
    """A caller's variables do not fit the prompt; ``param`` names the variable."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class VariableInfo:
    name: str
    required: bool
    default: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    system: str | None
    """The route's ``prompt.system``, unchanged (it has no placeholders)."""
    user: str
    """The template with every placeholder replaced."""

    def messages(self) -> list[dict[str, str]]:
        """The chat messages: the system prompt (when there is one), then the user message."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": self.user})
        return out


def placeholders(template: str) -> list[str]:
    """Variable names the template uses, in order of first use."""
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))


def variables(prompt: Prompt) -> list[VariableInfo]:
    """What the prompt takes: its declared variables, then those only its template uses."""
    declared = {v.name: v for v in prompt.variables or ()}
    out = [
        VariableInfo(v.name, v.default is None, v.default, v.description)
        for v in prompt.variables or ()
    ]
    out += [
        VariableInfo(name, True)
        for name in placeholders(prompt.template or "")
        if name not in declared
    ]
    return out


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    kind = "null" if value is None else type(value).__name__
    raise VariableError(
        f"variable {name} must be a string (or a number or boolean), not {kind}",
        param=name,
        code="invalid_variable",
    )


def render(prompt: Prompt, values: Mapping[str, Any]) -> RenderedPrompt:
    """The prompt's system text and its template filled in with ``values``.

    Raises :class:`VariableError` for an unknown variable, a value that is not text, or a
    required variable that is missing (the message names every missing one)."""
    if prompt.template is None:
        raise ValueError("the prompt has no template to render")
    taken = {v.name: v for v in variables(prompt)}
    for name in values:
        if name not in taken:
            known = ", ".join(taken) or "none"
            raise VariableError(
                f"unknown variable {name}; this prompt takes: {known}",
                param=name,
                code="unknown_variable",
            )
    missing = [v for v in taken.values() if v.required and v.name not in values]
    if missing:
        described = "; ".join(
            f"{v.name} ({v.description})" if v.description else v.name for v in missing
        )
        noun = "variable" if len(missing) == 1 else "variables"
        raise VariableError(
            f"missing {noun}: {described}", param=missing[0].name, code="missing_variable"
        )
    filled = {name: _text(name, value) for name, value in values.items()}
    for v in taken.values():
        if v.name not in filled and v.default is not None:
            filled[v.name] = v.default
    user = PLACEHOLDER.sub(lambda m: filled[m.group(1)], prompt.template)
    return RenderedPrompt(prompt.system, user)


# -- the running summary of a conversation ---------------------------------------------------

SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Fold the new turns into the summary so far. Keep facts, names, numbers, decisions, "
    "commitments, open questions and the user's preferences; drop small talk. Answer with "
    "the updated summary only, at most {words} words."
)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text")
        )
    return ""


def transcript(messages: Iterable[Mapping[str, Any]]) -> str:
    """OpenAI chat messages as ``role: text`` lines; tool calls as ``[calls name(args)]``."""
    lines = []
    for message in messages:
        role = str(message.get("role", "user"))
        text = _content_text(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            text += f" [calls {function.get('name', '?')}({function.get('arguments', '')})]"
        lines.append(f"{role}: {text.strip()}")
    return "\n".join(lines)


def summary_messages(
    summary: str | None, messages: Iterable[Mapping[str, Any]], max_words: int
) -> list[dict[str, str]]:
    """The chat messages that ask a model to fold ``messages`` into ``summary``."""
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(words=max_words)},
        {
            "role": "user",
            "content": f"Summary so far:\n{summary or '(none)'}\n\n"
            f"New turns:\n{transcript(messages)}",
        },
    ]
