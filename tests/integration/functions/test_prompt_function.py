"""The prompt function as a plain process in front of a real gateway (gRPC on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from fnkit import API_KEY, HAIKU_PROMPT, FunctionProcess, Starter, post

from gwkit import ThreadedGateway

SEA = "Mock reply from mock-small: Write a haiku about the sea, in a calm mood."


def prompt_env(gw: ThreadedGateway, model: str = "haiku", **extra: str) -> dict[str, str]:
    """The environment the operator's Knative Service gives the function."""
    return {
        "KANAL_ROUTE": model,
        "KANAL_ROUTE_NAMESPACE": "default",
        "KANAL_MODEL": model,
        "KANAL_GATEWAY_GRPC": gw.grpc_target,
        "KANAL_PROMPT": json.dumps(HAIKU_PROMPT),
        **extra,
    }


@pytest.fixture(scope="module")
def haiku(gateway: ThreadedGateway, functions: Starter) -> FunctionProcess:
    # the console script, as the container's ENTRYPOINT runs it
    return functions("kanal_functions.prompt", prompt_env(gateway), script="kanal-fn-prompt")


@pytest.fixture(scope="module")
def for_model(gateway: ThreadedGateway, functions: Starter) -> Callable[[str], FunctionProcess]:
    """The prompt function of another route (one process per model)."""
    started: dict[str, FunctionProcess] = {}

    def get(model: str) -> FunctionProcess:
        if model not in started:
            started[model] = functions("kanal_functions.prompt", prompt_env(gateway, model))
        return started[model]

    return get


def test_health(haiku: FunctionProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(haiku.url + "/healthz", timeout=5) as response:
        assert response.status == 200 and json.load(response) == {"status": "ok"}


def test_variables_in_rendered_prompt_through_the_gateway_answer_out(
    haiku: FunctionProcess,
) -> None:
    reply = haiku.post({"topic": "the sea"}, {"X-Request-Id": "fn-test-1"})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["output"] == SEA  # the mock echoes the rendered template
    assert body["route"] == "default/haiku" and body["model"] == "mock-small"
    assert body["finish_reason"] == "stop"
    # the system prompt went along: the mock counts the words of every message (6 + 10)
    assert body["usage"]["prompt_tokens"] == 16
    assert reply.headers["x-kanal-backend"] == "default/mock"
    assert reply.headers["x-request-id"] == "fn-test-1"  # forwarded to the gateway and back


def test_numbers_and_booleans_are_written_as_json(haiku: FunctionProcess) -> None:
    reply = haiku.post({"topic": 7, "mood": True})
    assert reply.json()["output"].endswith("about 7, in a true mood.")


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "words"),
    [
        ({"mood": "dark"}, 400, "missing_variable", "topic", "What the haiku is about"),
        ({"topic": "x", "colour": "red"}, 400, "unknown_variable", "colour", "topic, mood"),
        ({"topic": ["x"]}, 400, "invalid_variable", "topic", "not list"),
        ({"topic": None}, 400, "invalid_variable", "topic", "not null"),
        ("{not json", 400, "invalid_json", None, "not valid JSON"),
        ("[1, 2]", 400, "invalid_json", None, "JSON object of variables"),
    ],
)
def test_bad_variables_are_400_naming_the_variable(
    haiku: FunctionProcess, body: object, status: int, code: str, param: str | None, words: str
) -> None:
    reply = haiku.post(body)
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    if param:
        assert param in error["message"]


def test_unknown_path_and_method_are_json_errors(haiku: FunctionProcess) -> None:
    reply = haiku.post({}, path="/nope")
    assert reply.status == 404 and reply.json()["error"]["code"] == "unknown_url"


def test_streams_as_server_sent_events(haiku: FunctionProcess) -> None:
    for url, headers in [
        (haiku.url + "/?stream=true", {}),
        (haiku.url + "/", {"Accept": "text/event-stream"}),
    ]:
        reply = post(url, {"topic": "the sea"}, headers)
        assert reply.status == 200, reply.body
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        events = reply.events()
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        *texts, last = chunks
        assert len(texts) > 5  # word by word, not one buffered answer
        assert "".join(t["output"] for t in texts) == SEA
        assert last["finish_reason"] == "stop" and last["model"] == "mock-small"
        assert last["usage"]["completion_tokens"] == len(SEA.split())


def test_stream_false_is_a_plain_answer(haiku: FunctionProcess) -> None:
    reply = post(haiku.url + "/?stream=false", {"topic": "the sea"})
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["output"] == SEA


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("nope", 404, "model_not_found"),  # no such route for this caller
        ("broken", 502, "upstream_error"),  # the mock's error-503 model: an upstream failure
        ("limited", 429, "upstream_rate_limited"),
    ],
)
def test_gateway_errors_keep_their_http_status(
    for_model: Callable[[str], FunctionProcess], model: str, status: int, code: str, stream: bool
) -> None:
    function = for_model(model)
    reply = post(function.url + ("/?stream=true" if stream else "/"), {"topic": "x"})
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")  # not an SSE stream
    error = reply.json()["error"]
    assert error["code"] == code
    if status == 429:
        assert reply.headers["Retry-After"] == "1"
        assert error["type"] == "rate_limit_error"


def test_unreachable_gateway_is_503(functions: Starter, gateway: ThreadedGateway) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    function = functions("kanal_functions.prompt", prompt_env(gateway, KANAL_GATEWAY_GRPC=closed))
    reply = function.post({"topic": "x"})
    assert reply.status == 503
    error = reply.json()["error"]
    assert error["code"] == "gateway_unavailable" and closed in error["message"]


def test_credentials_callers_own_else_the_functions(
    keyed_gateway: ThreadedGateway, functions: Starter, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bare = functions("kanal_functions.prompt", prompt_env(keyed_gateway))
    refused = bare.post({"topic": "the sea"})
    assert refused.status == 401 and refused.json()["error"]["code"] == "missing_api_key"
    wrong = bare.post({"topic": "the sea"}, {"Authorization": "Bearer sk-wrong"})
    assert wrong.status == 401 and wrong.json()["error"]["type"] == "authentication_error"
    mine = bare.post({"topic": "the sea"}, {"Authorization": f"Bearer {API_KEY}"})
    assert mine.status == 200 and mine.json()["output"] == SEA

    with_key = functions("kanal_functions.prompt", prompt_env(keyed_gateway, KANAL_API_KEY=API_KEY))
    assert with_key.post({"topic": "the sea"}).status == 200
    # the caller's own header wins over the function's key
    assert with_key.post({"topic": "x"}, {"Authorization": "Bearer sk-wrong"}).status == 401

    token = tmp_path_factory.mktemp("sa") / "token"
    token.write_text(API_KEY + "\n")  # a projected ServiceAccount token file, in shape
    with_token = functions(
        "kanal_functions.prompt", prompt_env(keyed_gateway, KANAL_TOKEN_FILE=str(token))
    )
    assert with_token.post({"topic": "the sea"}).status == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KANAL_PROMPT": ""}, "KANAL_PROMPT is not set"),
        ({"KANAL_PROMPT": "{"}, "KANAL_PROMPT is not a valid LlmRoute prompt"),
        ({"KANAL_PROMPT": '{"system": "s"}'}, "KANAL_PROMPT has no template"),
        ({"PORT": "http"}, "PORT must be a port number"),
    ],
)
def test_bad_configuration_exits_2_saying_why(env: dict[str, str], message: str) -> None:
    base = {"KANAL_MODEL": "haiku", "KANAL_PROMPT": json.dumps(HAIKU_PROMPT), "PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "kanal_functions.prompt"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
