"""The fakes themselves: thread mode for sync clients, defaults, the script queue."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import aiohttp

from fakes import FakeAnthropic, FakeGemini, FakeOpenAI, Fault, run


def post(url: str, body: object, headers: dict[str, str]) -> tuple[int, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serve_in_thread_for_sync_clients() -> None:
    with FakeOpenAI(api_key="k").serve_in_thread() as fake:
        fake.script(Fault.status(503))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": "Bearer k"}
        assert post(fake.url + "/chat/completions", body, headers)[0] == 503
        status, answer = post(fake.url + "/chat/completions", body, headers)
        assert status == 200 and isinstance(answer, dict)
        assert answer["choices"][0]["message"]["content"] == "Hello from the fake upstream."
        status, problem = post(fake.url + "/chat/completions", body, {})
        assert status == 401 and isinstance(problem, dict)
        assert problem["error"]["code"] == "invalid_api_key"
        assert len(fake.requests) == 3 and fake.pending == 0


def test_default_answer_and_provider_error_shapes() -> None:
    async def main() -> None:
        async with FakeAnthropic() as anthropic, FakeGemini() as gemini:
            anthropic.default = Fault.status(529)
            gemini.default = Fault.rate_limited(5)
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    async with session.post(
                        anthropic.url + "/messages", json={}, headers={"anthropic-version": "x"}
                    ) as resp:
                        assert resp.status == 529
                        assert (await resp.json())["error"]["type"] == "overloaded_error"
                async with session.post(gemini.url + "/models/g:generateContent", json={}) as resp:
                    assert resp.status == 429
                    error = (await resp.json())["error"]
                    assert error["status"] == "RESOURCE_EXHAUSTED"
                    assert error["details"][0]["retryDelay"] == "5s"
                async with session.post(anthropic.root + "/nowhere", json={}) as resp:
                    assert resp.status == 529  # the default applies to every request

    run(main())


def test_gemini_stream_without_alt_sse_is_a_json_array() -> None:
    async def main() -> None:
        async with FakeGemini() as fake, aiohttp.ClientSession() as session:
            body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
            url = fake.url + "/models/g:streamGenerateContent"
            async with session.post(url, json=body) as resp:
                chunks = await resp.json()
        assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"

    run(main())


def test_fakes_validate_like_the_real_api() -> None:
    async def main() -> None:
        async with FakeAnthropic() as fake, aiohttp.ClientSession() as session:
            body = {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}
            headers = {"anthropic-version": "2023-06-01"}
            async with session.post(fake.url + "/messages", json=body, headers=headers) as resp:
                assert resp.status == 400
                assert "system" in (await resp.json())["error"]["message"]

    run(main())
