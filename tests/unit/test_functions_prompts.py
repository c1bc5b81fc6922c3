"""kanal.prompts: the template semantics of LlmRoute.prompt, and the summary fold's words."""

from __future__ import annotations

from typing import Any

import pytest

from kanal.api.llmroute import Prompt
from kanal.gateway.policy._context_store import StoredMessage
from kanal.gateway.policy._context_summary import summarizer_body
from kanal.prompts import (
    SUMMARY_INSTRUCTIONS,
    VariableError,
    placeholders,
    render,
    summary_messages,
    transcript,
    variables,
)


def prompt(**spec: Any) -> Prompt:
    return Prompt.model_validate(spec)


TICKET = prompt(
    system="You summarize support tickets.",
    template="Ticket from {{customer}}:\n{{ ticket }}\n({{customer}})",
    variables=[
        {"name": "customer", "description": "Customer name", "default": "a customer"},
        {"name": "ticket", "description": "The ticket text"},
    ],
)


def test_renders_values_and_defaults() -> None:
    rendered = render(TICKET, {"ticket": "It broke."})
    assert rendered.user == "Ticket from a customer:\nIt broke.\n(a customer)"
    assert rendered.system == "You summarize support tickets."
    assert rendered.messages() == [
        {"role": "system", "content": "You summarize support tickets."},
        {"role": "user", "content": "Ticket from a customer:\nIt broke.\n(a customer)"},
    ]
    assert render(TICKET, {"ticket": "x", "customer": "Ada"}).user == "Ticket from Ada:\nx\n(Ada)"


def test_no_system_prompt_sends_only_the_user_message() -> None:
    rendered = render(prompt(template="Hi {{name}}"), {"name": "Ada"})
    assert rendered.messages() == [{"role": "user", "content": "Hi Ada"}]


def test_missing_variables_are_named_with_their_description() -> None:
    with pytest.raises(VariableError) as info:
        render(TICKET, {})
    assert info.value.param == "ticket" and info.value.code == "missing_variable"
    assert info.value.message == "missing variable: ticket (The ticket text)"

    two = prompt(template="{{a}} {{b}} {{c}}", variables=[{"name": "c", "default": "C"}])
    with pytest.raises(VariableError) as info:
        render(two, {})
    assert info.value.message == "missing variables: a; b" and info.value.param == "a"


def test_undeclared_placeholders_are_required_and_declared_unused_ones_too() -> None:
    p = prompt(template="{{used}}", variables=[{"name": "declared"}])
    assert [(v.name, v.required) for v in variables(p)] == [("declared", True), ("used", True)]
    with pytest.raises(VariableError, match="missing variables: declared; used"):
        render(p, {})
    assert render(p, {"declared": "d", "used": "u"}).user == "u"


def test_unknown_variables_are_refused() -> None:
    with pytest.raises(VariableError) as info:
        render(TICKET, {"ticket": "x", "custmer": "typo"})
    assert info.value.param == "custmer" and info.value.code == "unknown_variable"
    assert "customer, ticket" in info.value.message


@pytest.mark.parametrize(
    ("value", "text"), [(3, "3"), (2.5, "2.5"), (True, "true"), (False, "false"), ("", "")]
)
def test_numbers_and_booleans_are_written_as_json(value: object, text: str) -> None:
    assert render(prompt(template="[{{v}}]"), {"v": value}).user == f"[{text}]"


@pytest.mark.parametrize("value", [None, [1], {"a": 1}])
def test_other_values_are_refused(value: object) -> None:
    with pytest.raises(VariableError) as info:
        render(prompt(template="{{v}}"), {"v": value})
    assert info.value.param == "v" and info.value.code == "invalid_variable"


def test_one_pass_values_are_never_expanded() -> None:
    p = prompt(template="{{a}} / {{b}}")
    assert render(p, {"a": "{{b}}", "b": "B"}).user == "{{b}} / B"


def test_only_identifiers_in_braces_are_placeholders() -> None:
    template = "{{ x }} {{1x}} {{x-y}} {x} {{{x}}} {{ }}"
    assert placeholders(template) == ["x"]
    assert render(prompt(template=template), {"x": "X"}).user == "X {{1x}} {{x-y}} {x} {X} {{ }}"


def test_a_prompt_without_template_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="no template"):
        render(prompt(system="s"), {})


def test_summary_messages_are_the_in_process_summarizers() -> None:
    messages = [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": [{"type": "text", "text": "42"}, {"type": "image"}]},
    ]
    out = summary_messages("earlier", messages, 64)
    assert out[0] == {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(words=64)}
    assert "at most 64 words" in out[0]["content"]
    assert out[1]["content"] == (
        "Summary so far:\nearlier\n\nNew turns:\n"
        "user: my name is Ada\nassistant: [calls f({})]\ntool: 42"
    )
    assert "(none)" in summary_messages(None, messages, 64)[1]["content"]
    stored = [StoredMessage(i, 1, False, m) for i, m in enumerate(messages)]
    body = summarizer_body("small", "earlier", stored, 64)
    assert body["messages"] == out  # one source of the words for both forms of the fold
    assert transcript([]) == ""
