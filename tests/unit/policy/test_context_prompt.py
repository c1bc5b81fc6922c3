"""Building the upstream prompt from a session and planning summary folds (pure logic)."""

from __future__ import annotations

from typing import Any

from kanal.gateway.policy._context_prompt import (
    FRAMING,
    SUMMARY_PREFIX,
    assistant_message,
    build_prompt,
    history_budget,
    message_tokens,
    split_request,
    units,
)
from kanal.gateway.policy._context_store import History, StoredMessage
from kanal.gateway.policy._context_summary import (
    needs_fold,
    plan_fold,
    summarizer_body,
    transcript,
)
from kanal.gateway.tokens import estimate_messages

Json = dict[str, Any]


def u(text: str) -> Json:
    return {"role": "user", "content": text}


def a(text: str) -> Json:
    return {"role": "assistant", "content": text}


def call(*ids: str) -> Json:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "look", "arguments": "{}"}}
            for i in ids
        ],
    }


def tool(call_id: str, text: str = "found") -> Json:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def history(*items: Json | tuple[Json, int], summary: str | None = None, sumt: int = 0) -> History:
    stored = []
    for seq, item in enumerate(items, 1):
        message, tokens = item if isinstance(item, tuple) else (item, 10)
        stored.append(StoredMessage(seq, tokens, message["role"] == "tool", message))
    return History(
        messages=stored,
        summary=summary,
        summary_tokens=sumt,
        tokens=sum(s.tokens for s in stored),
        epoch="e" if stored or summary else "",
    )


def contents(messages: list[Json]) -> list[Any]:
    return [
        m.get("content") if m["role"] != "tool" else f"tool:{m['tool_call_id']}" for m in messages
    ]


# -- system messages and the summary ----------------------------------------------------------


def test_system_messages_come_first_then_summary_history_and_new() -> None:
    request = split_request(
        [u("new question"), {"role": "system", "content": "be brief"}], "You are kanal."
    )
    prompt = build_prompt(request, history(u("old"), a("old answer"), summary="S"), 10_000)
    assert prompt.messages == [
        {"role": "system", "content": "You are kanal."},
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": SUMMARY_PREFIX + "S"},
        u("old"),
        a("old answer"),
        u("new question"),
    ]
    assert prompt.new == [u("new question")]  # system messages are never stored
    assert prompt.history_messages == 2


def test_route_system_prompt_is_not_repeated_and_developer_counts_as_system() -> None:
    request = split_request(
        [{"role": "developer", "content": "dev"}, {"role": "system", "content": "Same"}, u("q")],
        "Same",
    )
    assert [m["content"] for m in request.head] == ["dev", "Same"]
    assert request.new == [u("q")] and request.new_tokens == [message_tokens(u("q"))]


def test_without_history_the_request_goes_as_it_came() -> None:
    request = split_request([u("hi")], None)
    prompt = build_prompt(request, History(), 100)
    assert prompt.messages == [u("hi")] and prompt.history_messages == 0
    assert prompt.tokens == estimate_messages([u("hi")])


def test_summary_and_system_count_against_the_budget() -> None:
    request = split_request([u("q")], "sys")
    fixed = estimate_messages([{"role": "system", "content": "sys"}]) + message_tokens(u("q"))
    past = history(u("1"), a("2"), u("3"), a("4"), summary="S", sumt=15)
    # room for exactly two stored messages once system, summary and the new message count
    prompt = build_prompt(request, past, fixed + 15 + 20)
    assert contents(prompt.messages) == ["sys", SUMMARY_PREFIX + "S", "3", "4", "q"]
    assert prompt.tokens == fixed + 15 + 20
    assert history_budget(request, fixed + 35) == 35  # what the store may fill: summary + 20


# -- the budget ----------------------------------------------------------------------------


def test_the_newest_whole_turns_win_and_no_gap_is_filled() -> None:
    past = history(
        (u("tiny"), 1),
        (a("tiny too"), 1),
        (u("big"), 50),
        (a("b"), 1),
        (u("recent"), 10),
        (a("newest"), 10),
    )
    request = split_request([u("q")], None)
    budget = estimate_messages([u("q")]) + 25
    prompt = build_prompt(request, past, budget)
    # the "tiny" turn would fit, but it would leave a hole where "big" was
    assert contents(prompt.messages) == ["recent", "newest", "q"]
    # a turn is never cut: 15 tokens do not take half of the newest turn
    assert contents(build_prompt(request, past, budget - 10).messages) == ["q"]


def test_history_never_starts_with_a_fragment_of_a_turn() -> None:
    past = history(a("answer whose question was trimmed"), u("q1"), a("a1"))
    prompt = build_prompt(split_request([u("q2")], None), past, 10_000)
    assert contents(prompt.messages) == ["q1", "a1", "q2"]


def test_nothing_fits_when_the_new_messages_take_the_budget() -> None:
    prompt = build_prompt(split_request([u("q " * 100)], None), history(u("old"), a("x")), 10)
    assert prompt.messages == [u("q " * 100)] and prompt.history_messages == 0


# -- tool calls --------------------------------------------------------------------------


def test_a_tool_call_and_its_results_go_together_or_not_at_all() -> None:
    past = history(
        u("weather?"),
        (call("c1", "c2"), 10),
        (tool("c1"), 10),
        (tool("c2"), 10),
        (a("sunny"), 10),
        (u("tomorrow?"), 10),
        (a("rain"), 10),
    )
    request = split_request([u("thanks")], None)
    base = estimate_messages([u("thanks")])
    assert contents(build_prompt(request, past, base + 70).messages) == [
        "weather?",
        None,
        "tool:c1",
        "tool:c2",
        "sunny",
        "tomorrow?",
        "rain",
        "thanks",
    ]
    # one token short: the whole older turn stays out, the call with its results
    assert contents(build_prompt(request, past, base + 69).messages) == [
        "tomorrow?",
        "rain",
        "thanks",
    ]


def test_calls_still_waiting_for_results_are_not_sent() -> None:
    past = history(u("a"), call("c1"), u("never mind"), a("ok"))
    prompt = build_prompt(split_request([u("q")], None), past, 10_000)
    assert contents(prompt.messages) == ["a", "never mind", "ok", "q"]


def test_the_last_call_goes_along_when_the_request_brings_its_results() -> None:
    past = history((u("look it up"), 10), (call("c1"), 500))
    request = split_request([tool("c1", "42")], None)
    prompt = build_prompt(request, past, 50)  # the call alone is over budget: it goes anyway
    assert contents(prompt.messages) == ["look it up", None, "tool:c1"]
    assert prompt.messages[1]["tool_calls"][0]["id"] == "c1"


def test_a_resent_assistant_call_message_is_recognised_by_its_ids() -> None:
    past = history(u("look it up"), call("c1"))
    request = split_request([call("c1"), tool("c1")], None)  # the SDK loop resends the call
    prompt = build_prompt(request, past, 10_000)
    assert contents(prompt.messages) == ["look it up", None, "tool:c1"]
    assert prompt.new == [tool("c1")]  # stored once
    assert len(prompt.new_tokens) == 1


def test_orphan_tool_results_are_not_sent() -> None:
    past = history(u("hi"), tool("ghost"), a("hello"), call("c1"), tool("c1"), tool("c9"))
    assert [len(x.messages) for x in units(past.messages)] == [1, 1, 2]
    prompt = build_prompt(split_request([u("q")], None), past, 10_000)
    assert contents(prompt.messages) == ["hi", "hello", None, "tool:c1", "q"]


# -- the stored assistant turn -------------------------------------------------------------


def test_assistant_message_from_a_full_response_keeps_tool_calls() -> None:
    response = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                    "refusal": None,
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    assert assistant_message("", response, "tool_calls") == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def test_assistant_message_from_a_stream_is_its_text() -> None:
    assert assistant_message("streamed text", None, "stop") == a("streamed text")
    assert assistant_message("", None, "length") == a("")
    assert assistant_message("", None, "tool_calls") is None  # calls unknown: not stored
    assert message_tokens({"role": "assistant"}) == FRAMING


# -- summary folds -------------------------------------------------------------------------


def test_fold_plan_takes_the_oldest_whole_turns_until_the_rest_fits() -> None:
    past = history(u("1"), a("2"), call("c"), tool("c"), u("5"), a("6"))
    plan = plan_fold(past, 25)
    assert plan is not None
    assert [s.seq for s in plan.messages] == [1, 2, 3, 4] and plan.through_seq == 4
    assert plan.tokens == 40
    assert plan_fold(past, 1000) is None
    whole = plan_fold(past, 0)  # never the newest turn
    assert whole is not None and whole.through_seq == 4
    assert plan_fold(history(u("1"), a("2")), 0) is None


def test_fold_plan_takes_abandoned_calls_but_not_the_newest_turn() -> None:
    past = history(u("1"), call("c"), tool("ghost"), u("3"), a("4"), u("5"), call("d"))
    plan = plan_fold(past, 0)
    assert plan is not None and plan.through_seq == 5  # the orphan result goes too
    assert [s.seq for s in plan.messages] == [1, 2, 4, 5]


def test_needs_fold_and_the_summarizer_request() -> None:
    assert not needs_fold(90, 10, 100) and needs_fold(91, 10, 100)
    past = history(u("my name is Ada"), call("c"), tool("c", "42"))
    text = transcript(past.messages)
    assert text == "user: my name is Ada\nassistant: [calls look({})]\ntool: 42"
    body = summarizer_body("small", "earlier", past.messages, 64)
    assert body["model"] == "small" and body["max_tokens"] == 64
    assert body["messages"][-1]["role"] == "user"
    assert "earlier" in body["messages"][-1]["content"] and text in body["messages"][-1]["content"]


def test_the_fast_path_without_tool_calls_agrees_with_the_unit_logic() -> None:
    import random

    from kanal.gateway.policy import _context_prompt

    rng = random.Random(7)
    for _ in range(300):
        items: list[tuple[Json, int]] = []
        for i in range(rng.randrange(0, 12)):
            role = rng.choice(["user", "user", "assistant", "assistant", "system"])
            items.append(({"role": role, "content": f"m{i}"}, rng.randrange(1, 30)))
        past = history(*items, summary=rng.choice([None, "S"]), sumt=rng.randrange(0, 20))
        request = split_request([u("new")], rng.choice([None, "sys"]))
        budget = rng.randrange(0, 200)
        fast = build_prompt(request, past, budget)
        head = list(request.head)
        if past.summary:
            head.append(_context_prompt.summary_message(past.summary))
        slow = _context_prompt._build_with_units(
            request, past, budget, head, past.summary_tokens if past.summary else 0
        )
        assert fast == slow
