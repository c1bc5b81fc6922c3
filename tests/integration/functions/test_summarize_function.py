"""The summarize function as a plain process in front of a real gateway: the same fold as
the gateway's in-process summarizer, out of process."""

from __future__ import annotations

import pytest
from fnkit import FunctionProcess, Starter

from gwkit import ThreadedGateway
from kanal.gateway.policy._context_store import StoredMessage
from kanal.gateway.policy._context_summary import summarizer_body

MESSAGES = [
    {"role": "user", "content": "my name is Ada"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada, it is 42."}]},
]


@pytest.fixture(scope="module")
def summarize(gateway: ThreadedGateway, functions: Starter) -> FunctionProcess:
    env = {"KANAL_GATEWAY_GRPC": gateway.grpc_target, "KANAL_MODEL": "haiku"}
    return functions("kanal_functions.summarize", env, script="kanal-fn-summarize")


def test_folds_the_turns_with_the_in_process_summarizers_words(
    summarize: FunctionProcess,
) -> None:
    reply = summarize.post(
        {"model": "haiku", "summary": "They met.", "messages": MESSAGES, "maxWords": 200}
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    assert set(body) == {"summary", "model", "usage"} and body["model"] == "mock-small"
    # the mock echoes the last user message: the request the gateway's own fold would send
    stored = [StoredMessage(i, 1, m["role"] == "tool", m) for i, m in enumerate(MESSAGES)]
    in_process = summarizer_body("mock-small", "They met.", stored, 200)
    echoed = " ".join(in_process["messages"][-1]["content"].split())
    assert body["summary"] == f"Mock reply from mock-small: {echoed}"
    assert "user: my name is Ada" in body["summary"]
    assert "assistant: [calls look({})]" in body["summary"]
    # and the instructions as system message: counted in the prompt tokens
    words = sum(len(m["content"].split()) for m in in_process["messages"])
    assert body["usage"]["prompt_tokens"] == words


def test_max_words_caps_the_answer_and_model_defaults_from_env(
    summarize: FunctionProcess,
) -> None:
    reply = summarize.post({"messages": MESSAGES[:1], "maxWords": 5})  # model: $KANAL_MODEL
    assert reply.status == 200, reply.body
    assert reply.json()["summary"] == "Mock reply from mock-small: Summary"  # 5 words
    assert reply.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": MESSAGES, "maxWords": 0}, "maxWords"),
        ({"messages": MESSAGES, "maxWords": "9"}, "maxWords"),
        ({"messages": MESSAGES, "summary": {"a": 1}}, "summary"),
        ({"messages": MESSAGES, "max_words": 9}, "max_words"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    summarize: FunctionProcess, body: dict[str, object], param: str
) -> None:
    reply = summarize.post(body)
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["param"] == param


def test_gateway_errors_pass_through(summarize: FunctionProcess) -> None:
    reply = summarize.post({"model": "nope", "messages": MESSAGES})
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "model_not_found"
