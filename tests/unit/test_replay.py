"""A cached answer replayed as a stream looks like the stream the provider would send."""

from __future__ import annotations

from kanal.gateway.service import replay_chunks


def test_chat_replay_has_role_content_finish_and_usage() -> None:
    answer = {
        "id": "c1",
        "created": 5,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    chunks = replay_chunks("chat", answer)
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 4
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "hi"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 4
    assert {c["id"] for c in chunks} == {"c1"}


def test_replayed_tool_calls_carry_their_index() -> None:
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    answer = {
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "tool_calls": calls},
                "finish_reason": "tool_calls",
            }
        ],
    }
    delta = replay_chunks("chat", answer)[1]["choices"][0]["delta"]
    assert [c["index"] for c in delta["tool_calls"]] == [0, 1]
    assert "index" not in calls[0]  # the cached answer itself is not changed


def test_completion_replay() -> None:
    answer = {"id": "t", "choices": [{"text": "done", "finish_reason": "length"}]}
    chunks = replay_chunks("completion", answer)
    assert chunks == [
        {
            "id": "t",
            "created": chunks[0]["created"],
            "model": "",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "done", "finish_reason": "length"}],
        }
    ]
