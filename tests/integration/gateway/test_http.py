"""Raw HTTP behaviour: error shapes and statuses, headers, health, unknown paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from gwkit import MOCK_YAML, gateway_with, snapshot_from_yaml
from kanal.gateway.server import RunningGateway
from kanal.gateway.settings import GatewaySettings

Check = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def run(check: Check, **settings: Any) -> None:
    async def main() -> None:
        config = GatewaySettings(port=0, grpc_port=0, anonymous_tenant="default", **settings)
        async with gateway_with(snapshot_from_yaml(MOCK_YAML), config) as running:
            await _with_client(running, check)

    asyncio.run(main())


async def _with_client(running: RunningGateway, check: Check) -> None:
    async with aiohttp.ClientSession() as session:
        await check(session, f"http://127.0.0.1:{running.http_port}")


def assert_openai_error(body: dict[str, Any], code: str | None = None) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_invalid_json_is_400() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(f"{base}/v1/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            assert_openai_error(await r.json(), "invalid_json")

    run(check)


def test_missing_model_and_empty_messages_name_the_field() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(f"{base}/v1/chat/completions", json={"messages": []}) as r:
            assert r.status == 400
            assert assert_openai_error(await r.json())["param"] == "model"
        async with session.post(
            f"{base}/v1/chat/completions", json={"model": "chat", "messages": []}
        ) as r:
            assert r.status == 400
            error = assert_openai_error(await r.json())
            assert error["param"] == "messages"
            assert error["type"] == "invalid_request_error"

    run(check)


def test_body_too_large_is_413() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 5000}]}
        async with session.post(f"{base}/v1/chat/completions", data=orjson.dumps(big)) as r:
            assert r.status == 413
            assert_openai_error(await r.json(), "request_too_large")

    run(check, max_body_bytes=4096)


def test_unknown_path_is_json_404_and_health() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/v2/nothing") as r:
            assert r.status == 404
            assert_openai_error(await r.json(), "unknown_url")
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{base}/readyz") as r:
            assert r.status == 200
            assert (await r.text()).startswith("ok ")

    run(check)


def test_request_id_generated_or_echoed() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
        async with session.post(f"{base}/v1/chat/completions", json=body) as r:
            generated = r.headers["x-request-id"]
            assert generated.startswith("req_") and len(generated) > 10
        async with session.post(
            f"{base}/v1/chat/completions",
            json=body,
            headers={"x-request-id": "bad id <script>" + "x" * 200},
        ) as r:
            assert r.headers["x-request-id"].startswith("req_")  # unsafe ids are replaced

    run(check)


def test_n_must_be_1_and_stream_options_needs_stream() -> None:
    async def check(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(
            f"{base}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 2},
        ) as r:
            assert r.status == 400
            assert assert_openai_error(await r.json())["param"] == "n"
        async with session.post(
            f"{base}/v1/chat/completions",
            json={
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
        ) as r:
            assert r.status == 400
            assert assert_openai_error(await r.json())["param"] == "stream_options"

    run(check)


def test_not_ready_before_a_snapshot() -> None:
    async def main() -> None:
        from kanal.gateway.server import running_gateway

        async with (
            running_gateway(GatewaySettings(port=0, grpc_port=0)) as running,
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{running.http_port}/readyz") as r,
        ):
            assert r.status == 503

    asyncio.run(main())
