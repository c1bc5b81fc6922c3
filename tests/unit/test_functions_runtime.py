"""The function runtime's pure parts: gRPC errors back to HTTP, configuration from the
environment, credentials, and the summarize request."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from kanal.gateway.errors import GatewayError, from_upstream
from kanal.gateway.grpc_service import error_metadata, status_code
from kanal.gateway.providers.base import FailureKind, UpstreamError
from kanal_functions.gateway import CallContext, GatewayClient, GatewayConfig, http_error
from kanal_functions.prompt import target_from_env
from kanal_functions.runtime import ConfigError, FunctionError, listen_address
from kanal_functions.summarize import chat_request


def rpc_error(err: GatewayError) -> grpc.aio.AioRpcError:
    """What a function's client receives when the gateway aborts a call with ``err``."""
    trailers = grpc.aio.Metadata(*error_metadata(err, "req_1"))
    return grpc.aio.AioRpcError(status_code(err.status), grpc.aio.Metadata(), trailers, err.message)


GATEWAY_ERRORS = [
    GatewayError(400, "bad", code="invalid_value", param="messages"),
    GatewayError(401, "who?", code="missing_api_key"),
    GatewayError(403, "no", code="access_denied"),
    GatewayError(404, "no model", code="model_not_found", param="model"),
    GatewayError(413, "too big", code="request_too_large"),
    GatewayError(429, "slow down", code="rate_limit_exceeded", retry_after=2.4),
    from_upstream(UpstreamError(FailureKind.SERVER, "boom", status=503), model="m"),
    from_upstream(UpstreamError(FailureKind.AUTH, "key", status=401), model="m"),
    from_upstream(UpstreamError(FailureKind.CONNECT, "refused"), model="m"),
    from_upstream(UpstreamError(FailureKind.TIMEOUT, "slow"), model="m"),
    GatewayError(503, "redis down", code="limits_unavailable"),
    GatewayError(500, "internal error in the gateway", code="internal_error"),
]


@pytest.mark.parametrize("err", GATEWAY_ERRORS, ids=lambda e: f"{e.status}-{e.code}")
def test_gateway_errors_map_back_to_the_http_error_the_http_api_answers(
    err: GatewayError,
) -> None:
    mapped = http_error(rpc_error(err), "gw:9090")
    assert mapped.body() == err.body()  # message, type, param and code
    assert mapped.status == err.status
    assert mapped.headers["x-request-id"] == "req_1"
    if err.retry_after is not None:
        assert mapped.headers["Retry-After"] == "2"


def test_failures_that_never_reached_kanal() -> None:
    empty = grpc.aio.Metadata()
    refused = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, "connect failed")
    mapped = http_error(refused, "gw:9090")
    assert (mapped.status, mapped.code) == (503, "gateway_unavailable")
    assert "gw:9090" in mapped.message and "connect failed" in mapped.message
    too_big = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, empty, empty, "size")
    assert http_error(too_big, "gw").status == 413
    late = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, empty, empty, "Deadline")
    assert (http_error(late, "gw").status, http_error(late, "gw").code) == (
        504,
        "deadline_exceeded",
    )
    odd = grpc.aio.AioRpcError(grpc.StatusCode.DATA_LOSS, empty, empty, "?")
    assert http_error(odd, "gw").status == 500


def test_gateway_config_from_env(tmp_path: Path) -> None:
    assert GatewayConfig.from_env({}).target == "127.0.0.1:9090"
    config = GatewayConfig.from_env(
        {
            "KANAL_GATEWAY_GRPC": "kanal-gateway.kanal:9090",
            "KANAL_API_KEY": "sk-1",
            "KANAL_TOKEN_FILE": str(tmp_path / "t"),
            "KANAL_TIMEOUT": "2.5",
        }
    )
    assert config == GatewayConfig("kanal-gateway.kanal:9090", "sk-1", str(tmp_path / "t"), 2.5)
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="KANAL_TIMEOUT"):
            GatewayConfig.from_env({"KANAL_TIMEOUT": bad})


def test_credentials_callers_first_then_key_then_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("eyJ.token.v1\n")
    client = GatewayClient(GatewayConfig(api_key="sk-1", token_file=str(token)))
    assert client.authorization("Bearer caller") == "Bearer caller"
    assert client.authorization(None) == "Bearer sk-1"
    by_token = GatewayClient(GatewayConfig(token_file=str(token)))
    assert by_token.authorization(None) == "Bearer eyJ.token.v1"
    assert (
        GatewayClient(GatewayConfig(token_file=str(tmp_path / "absent"))).authorization(None)
        is None
    )
    metadata = by_token.metadata(CallContext(None, "s-1", "r-1"))
    assert metadata == (
        ("authorization", "Bearer eyJ.token.v1"),
        ("x-session-id", "s-1"),
        ("x-request-id", "r-1"),
    )
    assert GatewayClient(GatewayConfig()).metadata(CallContext()) == ()


def test_prompt_target_from_the_operators_environment() -> None:
    spec = {"template": "Hi {{name}}", "expose": {"function": True}}
    target = target_from_env(
        {"KANAL_PROMPT": json.dumps(spec), "KANAL_ROUTE": "greet", "KANAL_ROUTE_NAMESPACE": "t"}
    )
    assert (target.route, target.model, target.prompt.template) == (
        "t/greet",
        "greet",
        "Hi {{name}}",
    )
    with pytest.raises(ConfigError, match="KANAL_MODEL"):
        target_from_env({"KANAL_PROMPT": json.dumps(spec)})
    with pytest.raises(ConfigError, match="not a valid LlmRoute prompt"):
        target_from_env({"KANAL_PROMPT": '{"tempate": "x"}', "KANAL_MODEL": "m"})


def test_listen_address() -> None:
    assert listen_address({}) == ("0.0.0.0", 8080)  # Knative's PORT default
    assert listen_address({"PORT": "0", "HOST": "127.0.0.1"}) == ("127.0.0.1", 0)
    with pytest.raises(ConfigError):
        listen_address({"PORT": "70000"})


def test_summarize_request() -> None:
    request = chat_request({"messages": [{"role": "user", "content": "hi"}], "maxWords": 40}, "m")
    assert request.model == "m" and request.max_tokens == 40 and request.temperature == 0
    assert [m.role for m in request.messages] == ["system", "user"]
    assert "at most 40 words" in request.messages[0].content
    assert request.messages[1].content.endswith("New turns:\nuser: hi")
    with pytest.raises(FunctionError) as info:
        chat_request({"messages": [{"role": "user", "content": "hi"}]}, None)
    assert info.value.param == "model" and info.value.status == 400
    with pytest.raises(FunctionError) as info:
        chat_request({"model": "m", "messages": [{"role": "user"}], "maxWords": True}, None)
    assert info.value.param == "maxWords"
