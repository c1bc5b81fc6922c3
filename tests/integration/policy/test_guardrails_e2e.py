"""Guardrails end to end over HTTP (the official openai SDK) and gRPC, against a gateway whose
backend is a FakeOpenAI: refusals happen before any upstream call, and redaction is proven
by what the upstream actually received."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest

from fakes import FakeOpenAI
from gwkit import ThreadedGateway, snapshot_from_yaml, threaded_gateway
from kanal.v1 import gateway_pb2 as pb
from kanal.v1 import gateway_pb2_grpc as pb_grpc

GUARDRAILS = r"""
  guardrails:
    redact: [email, phone, credit-card]
    block:
      - '(?i)forbidden topic'
      - '(?i)project\s+falcon'
    maxInputTokens: 60
"""


def manifests(url: str) -> str:
    return f"""
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: fake}}
spec:
  provider: openai-compatible
  endpoint: {url}
  models: [{{name: m, contextWindow: 8192}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  retry: {{attempts: 0}}
{GUARDRAILS}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: cached}}
spec:
  backends: [{{backendRef: {{name: fake}}, model: m}}]
  cache: {{enabled: true, ttl: 1h}}
{GUARDRAILS}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI().serve_in_thread() as server:
        yield server


@pytest.fixture(scope="module")
def gw(fake: FakeOpenAI) -> Iterator[ThreadedGateway]:
    with threaded_gateway(snapshot_from_yaml(manifests(fake.url))) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(fake: FakeOpenAI) -> None:
    fake.clear()


@pytest.fixture
def c(gw: ThreadedGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=10)


def user(content: Any) -> list[Any]:
    return [{"role": "user", "content": content}]


LONG = "word " * 200
PII = "Reach me at jane.doe@example.com or +1 (555) 123-4567 about card 4111 1111 1111 1111."
REDACTED = "Reach me at [REDACTED:email] or [REDACTED:phone] about card [REDACTED:credit-card]."


# -- HTTP: refusals --------------------------------------------------------------------------


def refusal(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    return info.value


def error_of(err: openai.BadRequestError) -> dict[str, Any]:
    body: Any = err.body
    return dict(body) if isinstance(body, dict) else {}


@pytest.mark.parametrize(
    ("op", "param"), [("chat", "messages"), ("completion", "prompt"), ("embeddings", "input")]
)
def test_input_over_max_tokens_is_refused_before_any_upstream_call(
    c: openai.OpenAI, fake: FakeOpenAI, op: str, param: str
) -> None:
    calls = {
        "chat": lambda: c.chat.completions.create(model="chat", messages=user(LONG)),
        "completion": lambda: c.completions.create(model="chat", prompt=LONG),
        "embeddings": lambda: c.embeddings.create(model="chat", input=[LONG]),
    }
    err = refusal(calls[op])
    assert err.status_code == 400
    assert error_of(err)["code"] == "input_too_long"
    assert error_of(err)["param"] == param
    assert "maxInputTokens" in error_of(err)["message"]
    assert fake.requests == []


def test_block_rule_refuses_with_its_name_and_no_echo(c: openai.OpenAI, fake: FakeOpenAI) -> None:
    err = refusal(
        lambda: c.chat.completions.create(
            model="chat", messages=user("What is the status of PROJECT   Falcon?"), stream=True
        )
    )
    error = error_of(err)
    assert (error["code"], error["param"]) == ("blocked_by_guardrails", "messages")
    assert "guardrails.block[1]" in error["message"]
    assert "falcon" not in error["message"].lower()
    assert fake.requests == []


# -- HTTP: redaction -------------------------------------------------------------------------


def test_chat_pii_never_reaches_the_upstream(c: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = c.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "system", "content": "Support for a@b.io."}, *user(PII)],
    )
    assert raw.headers["x-kanal-redacted"] == "email,phone,credit-card"
    sent = fake.last.body["messages"]
    assert sent[0]["content"] == "Support for [REDACTED:email]."
    assert sent[1]["content"] == REDACTED
    for secret in (b"jane.doe@example.com", b"555", b"4111", b"a@b.io"):
        assert secret not in fake.last.raw


def test_streamed_and_content_part_requests_are_redacted(
    c: openai.OpenAI, fake: FakeOpenAI
) -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": PII}]
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=user(parts), stream=True
    )
    assert raw.headers["x-kanal-redacted"] == "email,phone,credit-card"
    assert list(raw.parse())
    sent_parts = fake.last.body["messages"][0]["content"]
    assert sent_parts == [{"type": "text", "text": "first"}, {"type": "text", "text": REDACTED}]
    assert fake.last.body["stream"] is True


def test_prompts_and_embedding_inputs_are_redacted(c: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = c.completions.with_raw_response.create(model="chat", prompt=PII)
    assert raw.headers["x-kanal-redacted"] == "email,phone,credit-card"
    assert fake.last.body["prompt"] == REDACTED
    emb = c.embeddings.with_raw_response.create(model="chat", input=["clean", "mail a@b.io"])
    assert emb.headers["x-kanal-redacted"] == "email"
    assert fake.last.body["input"] == ["clean", "mail [REDACTED:email]"]


def test_clean_input_passes_untouched_without_header(c: openai.OpenAI, fake: FakeOpenAI) -> None:
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=user("Order 12345678901234 shipped on 2024-01-15.")
    )
    assert "x-kanal-redacted" not in raw.headers
    assert fake.last.body["messages"][0]["content"] == "Order 12345678901234 shipped on 2024-01-15."


def test_the_cache_keys_on_the_redacted_request(c: openai.OpenAI, fake: FakeOpenAI) -> None:
    """Guardrails run before the cache: two requests that differ only in redacted PII are
    the same request upstream, so the second is a hit."""
    one = c.chat.completions.with_raw_response.create(
        model="cached", messages=user("cache probe for ann@example.com")
    )
    two = c.chat.completions.with_raw_response.create(
        model="cached", messages=user("cache probe for bob@example.org")
    )
    assert (one.headers["x-kanal-cache"], two.headers["x-kanal-cache"]) == ("miss", "hit")
    assert two.headers["x-kanal-redacted"] == "email"
    assert len(fake.requests) == 1


# -- gRPC ------------------------------------------------------------------------------------


@pytest.fixture
def stub(gw: ThreadedGateway) -> Iterator[pb_grpc.GatewayStub]:
    with grpc.insecure_channel(gw.grpc_target) as channel:
        yield pb_grpc.GatewayStub(channel)


def chat_request(text: str) -> pb.ChatRequest:
    return pb.ChatRequest(model="chat", messages=[pb.ChatMessage(role="user", content=text)])


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("tell me about the Forbidden Topic", "blocked_by_guardrails", "guardrails.block[0]"),
        (LONG, "input_too_long", "maxInputTokens"),
    ],
    ids=["block", "max-tokens"],
)
def test_grpc_refusals(
    stub: pb_grpc.GatewayStub, fake: FakeOpenAI, text: str, code: str, words: str
) -> None:
    for rpc in (stub.Chat, stub.ChatStream):
        with pytest.raises(grpc.RpcError) as info:
            result = rpc(chat_request(text), timeout=10)
            if not isinstance(result, pb.ChatResponse):
                list(result)
        err: Any = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.details()
        assert "forbidden" not in err.details().lower()
        trailing = dict(err.trailing_metadata())
        assert trailing["x-kanal-error-code"] == code
        assert trailing["x-kanal-error-param"] == "messages"
    assert fake.requests == []


def test_grpc_redaction(stub: pb_grpc.GatewayStub, fake: FakeOpenAI) -> None:
    _, call = stub.Chat.with_call(chat_request(PII), timeout=10)
    assert dict(call.initial_metadata())["x-kanal-redacted"] == "email,phone,credit-card"
    assert fake.last.body["messages"][0]["content"] == REDACTED
    stream = stub.ChatStream(chat_request("mail me: x@y.dev"), timeout=10)
    assert list(stream)
    assert dict(stream.initial_metadata())["x-kanal-redacted"] == "email"
    assert fake.last.body["messages"][0]["content"] == "mail me: [REDACTED:email]"
    reply = stub.Embed(pb.EmbedRequest(model="chat", input=["call 555-123-4567"]), timeout=10)
    assert reply.embeddings
    assert fake.last.body["input"] == ["call [REDACTED:phone]"]
