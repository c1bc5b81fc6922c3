"""Guardrails without servers: each PII class (what it catches and what it leaves alone),
redaction of every place callers write text, block rules, maxInputTokens, compiled once."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from kanal.api.llmroute import Guardrails
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy import _guardrails_pii as pii
from kanal.gateway.policy.base import Call, Caller
from kanal.gateway.policy.guardrails import HEADER, GuardrailsPolicy, input_texts, redact_body
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.stores import Stores
from kanal.snapshot import RouteConfig

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 5))


def scrub(text: str, *classes: str) -> tuple[str, set[str]]:
    found: set[str] = set()
    return pii.redact(text, pii.detectors_for(classes or pii.CLASSES), found), found


# -- the PII classes -------------------------------------------------------------------------

POSITIVE: dict[str, list[str]] = {
    "email": [
        "jane@example.com",
        "john.doe+tag@mail.example.co.uk",
        "X_Y-z%1@sub-domain.example.io",
    ],
    "phone": [
        "+1 (555) 123-4567",
        "+44 20 7946 0958",
        "+4915123456789",
        "+49 (0)30 1234567",
        "+33 1 23 45 67 89",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-1234",
        "030 1234567",
        "020 7946 0958",
        "01 23 45 67 89",
        "06-12345678",
    ],
    "credit-card": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011 1111 1111 1117",
    ],
    "ssn": ["123-45-6789", "078-05-1120"],
    "ip-address": [
        "192.168.1.10",
        "10.0.0.1",
        "255.255.255.255",
        "2001:db8::1",
        "fe80::1",
        "::1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    ],
    "iban": [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "NL91 ABNA 0417 1643 00",
        "BE68 5390 0754 7034",
        "FR14 2004 1010 0505 0001 3M02 606",
    ],
}

NEGATIVE: dict[str, list[str]] = {
    "email": ["user@localhost", "@handle", "a@b.c", "name at example dot com"],
    "phone": [
        "12345678901",  # a plain long number
        "order 12345678901234567890",
        "4111 1111 1111 1112",  # a card-shaped number (not Luhn-valid): not a phone either
        "+10 points",
        "2024-01-15",
        "01-05-2023 12:30",
        "01/02/2023",
        "version 1.2.3",
        "call me at 5",
    ],
    "credit-card": [
        "4111 1111 1111 1112",  # Luhn fails
        "1700000000000",  # a timestamp in ms (13 digits, first digit 1)
        "0000 0000 0000 0000",  # Luhn-valid, no card network
        "41111111111111111111111",  # a plain long number
        "1234 4111 1111 1111 1111",  # a valid card inside a longer run
        "ABC4111111111111111",  # glued to letters
    ],
    "ssn": [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "1234-56-7890",
    ],
    "ip-address": [
        "1.2.3.4.5",
        "256.1.1.1",
        "version 1.2.3",
        "12:30:45",
        "std::vector",
        "00:1A:2B:3C:4D:5E",
        "::",
    ],
    "iban": [
        "DE00 3704 0044 0532 0130 00",  # check digits wrong
        "DE89 3704 0044 0532 0130 01",
        "XX12 ABCD",
        "ABCDEFGHIJKLMNOPQRST",
    ],
}


@pytest.mark.parametrize(
    ("cls", "sample"),
    [(c, s) for c, samples in POSITIVE.items() for s in samples],
)
def test_positive_examples_are_redacted(cls: str, sample: str) -> None:
    text, found = scrub(f"see {sample} please", cls)
    assert text == f"see [REDACTED:{cls}] please"
    assert found == {cls}


@pytest.mark.parametrize(
    ("cls", "sample"),
    [(c, s) for c, samples in NEGATIVE.items() for s in samples],
)
def test_negative_examples_are_left_alone(cls: str, sample: str) -> None:
    text = f"see {sample} please"
    assert scrub(text, cls) == (text, set())


@pytest.mark.parametrize(
    ("cls", "sample"),
    [(c, s) for c, samples in POSITIVE.items() for s in samples],
)
def test_positives_are_found_as_their_own_class_with_all_classes_on(cls: str, sample: str) -> None:
    text, found = scrub(f"x {sample}.", *pii.CLASSES)
    assert text == f"x [REDACTED:{cls}]."
    assert found == {cls}


def test_only_configured_classes_are_redacted() -> None:
    text = "jane@example.com 555-123-4567"
    assert scrub(text, "phone") == ("jane@example.com [REDACTED:phone]", {"phone"})
    assert scrub(text, "email") == ("[REDACTED:email] 555-123-4567", {"email"})


def test_several_matches_in_one_text() -> None:
    text, found = scrub(
        "mail a@x.io or b@y.io, card 4111111111111111, from 10.1.2.3 via +1 555 123 4567\n"
        "IBAN DE89 3704 0044 0532 0130 00 and SSN 123-45-6789."
    )
    assert text == (
        "mail [REDACTED:email] or [REDACTED:email], card [REDACTED:credit-card], from "
        "[REDACTED:ip-address] via [REDACTED:phone]\n"
        "IBAN [REDACTED:iban] and SSN [REDACTED:ssn]."
    )
    assert found == set(pii.CLASSES)


def test_loose_shapes_are_trimmed_back_to_a_valid_match() -> None:
    assert scrub("BE68 5390 0754 7034 EUR", "iban")[0] == "[REDACTED:iban] EUR"
    assert scrub("BE68 5390 0754 7034 2024", "iban")[0] == "[REDACTED:iban] 2024"


def test_text_without_pii_is_returned_as_is() -> None:
    text = "Please summarise the attached article about gardening in 3 bullet points."
    out, found = scrub(text)
    assert out is text and not found


def test_unknown_class_is_an_error() -> None:
    with pytest.raises(ValueError):
        pii.detectors_for(["email", "passport"])


def test_check_functions() -> None:
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")
    assert pii.iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not pii.iban_ok("GB82 WEST 1234 5698 7654 33")
    assert not pii.iban_ok("GB82")


@pytest.mark.parametrize(
    "text",
    [
        "1" * 200_000,
        ("+1" + "2" * 30 + " ") * 6000,
        "1 " * 100_000,
        ("a." * 20 + "@") * 5000,
        "a" * 100_000 + "@" + "b." * 20000 + "1",
        ("1:" * 9 + " ") * 10000,
        ("DE89" + " AAAA" * 9 + " ") * 2000,
        "0 " * 100_000,
    ],
    ids=["digits", "plus", "digit-spaces", "emailish", "at-run", "colons", "ibanish", "zeros"],
)
def test_hostile_input_is_scanned_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - started < 2.0


# -- where text is found and rewritten --------------------------------------------------------

CHAT: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "You help jane@example.com."},
        {"role": "user", "content": "My number is 555-123-4567."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "card 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "https://x/a@b.com.png"}},
                {"type": "text", "text": "nothing here"},
            ],
        },
    ],
    "user": "u@example.com",
}


def test_chat_texts_are_every_content_and_text_part() -> None:
    assert list(input_texts("chat", CHAT)) == [
        "You help jane@example.com.",
        "My number is 555-123-4567.",
        "card 4111 1111 1111 1111",
        "nothing here",
    ]


def test_redacting_chat_builds_a_new_body_and_leaves_the_callers_alone() -> None:
    before = copy.deepcopy(CHAT)
    found: set[str] = set()
    out = redact_body("chat", CHAT, pii.detectors_for(pii.CLASSES), found)
    assert before == CHAT  # not mutated
    assert found == {"email", "phone", "credit-card"}
    messages = out["messages"]
    assert messages[0]["content"] == "You help [REDACTED:email]."
    assert messages[1]["content"] == "My number is [REDACTED:phone]."
    assert messages[2] is CHAT["messages"][2]  # unchanged parts are shared
    parts = messages[3]["content"]
    assert parts[0] == {"type": "text", "text": "card [REDACTED:credit-card]"}
    assert parts[1] is CHAT["messages"][3]["content"][1]  # images are not text
    assert parts[2] is CHAT["messages"][3]["content"][2]
    assert out["user"] == "u@example.com"  # not input text


def test_redacting_nothing_returns_the_same_body() -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert redact_body("chat", body, pii.detectors_for(pii.CLASSES), set()) is body


@pytest.mark.parametrize(
    ("op", "field", "value", "expected"),
    [
        ("completion", "prompt", "mail a@b.io", "mail [REDACTED:email]"),
        ("completion", "prompt", ["x", "mail a@b.io"], ["x", "mail [REDACTED:email]"]),
        ("embeddings", "input", "mail a@b.io", "mail [REDACTED:email]"),
        ("embeddings", "input", ["mail a@b.io", "y"], ["mail [REDACTED:email]", "y"]),
        ("embeddings", "input", [1, 2, 3], [1, 2, 3]),
    ],
)
def test_prompts_and_inputs_are_redacted(op: str, field: str, value: Any, expected: Any) -> None:
    body = {"model": "chat", field: value}
    before = copy.deepcopy(body)
    out = redact_body(op, body, pii.detectors_for(["email"]), set())
    assert out[field] == expected
    assert body == before


# -- the policy ------------------------------------------------------------------------------


def route(**guardrails: Any) -> RouteConfig:
    return RouteConfig(
        id="team-a/chat",
        namespace="team-a",
        model="chat",
        tiers=(),
        tenants=frozenset({"team-a"}),
        guardrails=Guardrails(**guardrails),
    )


def make_call(the_route: RouteConfig, body: dict[str, Any], op: Any = "chat") -> Call:
    return Call(op=op, caller=Caller(tenant="team-a"), route=the_route, body=body, request_id="r")


def policy() -> GuardrailsPolicy:
    return GuardrailsPolicy(Stores(GatewaySettings()))


def chat(text: str) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}]}


def test_enabled_only_with_something_to_do() -> None:
    p = policy()
    assert p.enabled(route(redact=["email"]))
    assert p.enabled(route(block=["x"]))
    assert p.enabled(route(max_input_tokens=5))
    assert not p.enabled(route())


@pytest.mark.parametrize(
    ("op", "body", "param"),
    [
        ("chat", chat("word " * 100), "messages"),
        ("completion", {"model": "chat", "prompt": "word " * 100}, "prompt"),
        ("embeddings", {"model": "chat", "input": ["word " * 100]}, "input"),
    ],
)
def test_max_input_tokens(op: str, body: dict[str, Any], param: str) -> None:
    p = policy()
    with pytest.raises(GatewayError) as info:
        run(p.before(make_call(route(max_input_tokens=50), body, op)))
    err = info.value
    assert (err.status, err.code, err.param) == (400, "input_too_long", param)
    assert "maxInputTokens" in err.message and "50" in err.message
    short = chat("a few words") if op == "chat" else {**body, param: "a few words"}
    assert run(p.before(make_call(route(max_input_tokens=50), short, op))) is None


def test_max_input_tokens_uses_the_calls_estimate() -> None:
    c = make_call(route(max_input_tokens=50), chat("short"))
    c.estimated_prompt_tokens = 51
    with pytest.raises(GatewayError):
        run(policy().before(c))


def test_block_names_the_rule_not_the_text() -> None:
    r = route(block=["(?i)forbidden", r"(?i)project\s+falcon"])
    body = chat("Tell me about Project  Falcon, please")
    with pytest.raises(GatewayError) as info:
        run(policy().before(make_call(r, body)))
    err = info.value
    assert (err.status, err.code, err.param) == (400, "blocked_by_guardrails", "messages")
    assert "guardrails.block[1]" in err.message
    assert "falcon" not in err.message.lower()
    assert run(policy().before(make_call(r, chat("all fine")))) is None


def test_block_sees_the_text_before_redaction() -> None:
    r = route(block=[r"@example\.com"], redact=["email"])
    with pytest.raises(GatewayError):
        run(policy().before(make_call(r, chat("write to jane@example.com"))))


def test_redaction_rewrites_the_body_and_sets_the_header() -> None:
    c = make_call(route(redact=["phone", "email"]), chat("I am a@b.io, 555-123-4567"))
    original = c.body
    assert run(policy().before(c)) is None
    assert c.body["messages"][0]["content"] == "I am [REDACTED:email], [REDACTED:phone]"
    assert original["messages"][0]["content"] == "I am a@b.io, 555-123-4567"
    assert c.headers[HEADER] == "email,phone"  # in the documented class order


def test_no_header_when_nothing_was_redacted() -> None:
    c = make_call(route(redact=["email"]), chat("hello"))
    body = c.body
    run(policy().before(c))
    assert HEADER not in c.headers and c.body is body


def test_rules_are_compiled_once_per_route(monkeypatch: pytest.MonkeyPatch) -> None:
    p = policy()
    r = route(block=["a+b", "c"])
    first = p.rules(r)
    compiled: list[str] = []
    real = re.compile

    def counting(pattern: Any, flags: int = 0) -> re.Pattern[str]:
        compiled.append(pattern)
        return real(pattern, flags)

    monkeypatch.setattr(re, "compile", counting)
    for _ in range(50):
        with pytest.raises(GatewayError):
            run(p.before(make_call(r, chat("aab"))))
    assert p.rules(r) is first
    assert compiled == []
    changed = route(block=["x"])  # same id, new snapshot's object: recompiled
    assert p.rules(changed) is not first
    assert [pat.pattern for pat in p.rules(changed).block] == ["x"]
