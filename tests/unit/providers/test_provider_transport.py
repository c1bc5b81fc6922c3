"""The shared plumbing: SSE decoding, error messages, exception mapping, the endpoint cache."""

from __future__ import annotations

import typing

import aiohttp
import pytest

from kanal.api.modelbackend import Provider
from kanal.gateway.providers import ADAPTERS, FailureKind, Upstream, _transport
from kanal.gateway.providers._transport import (
    PerUpstream,
    SSEDecoder,
    exception_error,
    http_error,
    scrub,
)
from kanal.gateway.providers.anthropic import stream_error as anthropic_stream_error
from kanal.gateway.providers.gemini import error_info as gemini_error_info

KEY = "sk-unit-secret-key"


def upstream(**kw: typing.Any) -> Upstream:
    # the session is never used by these tests; any object stands in for it
    return Upstream("ns/backend", "http://127.0.0.1:1/v1", object(), api_key=KEY, **kw)  # type: ignore[arg-type]


def test_registry_covers_every_provider_of_the_api() -> None:
    assert set(ADAPTERS) == set(typing.get_args(Provider))
    assert all(adapter.provider == name for name, adapter in ADAPTERS.items())


# -- SSE -------------------------------------------------------------------------------------


def test_sse_events_split_anywhere_lf_or_crlf() -> None:
    stream = (
        b": comment\n"
        b'event: message_start\ndata: {"a": 1}\n\n'
        b"data: line one\r\ndata: line two\r\n\r\n"
        b"id: 7\nretry: 100\ndata:no-space\n\n"
        b"data: [DONE]\n\n"
    )
    for size in (1, 2, 5, len(stream)):
        decoder = SSEDecoder()
        events = []
        for i in range(0, len(stream), size):
            got = decoder.feed(stream[i : i + size])
            assert got is not None
            events += got
        events += decoder.close() or []
        assert events == [
            ("message_start", b'{"a": 1}'),
            (None, b"line one\nline two"),
            (None, b"no-space"),
            (None, b"[DONE]"),
        ]


def test_sse_last_event_without_blank_line_is_kept() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x": 1}') == []
    assert decoder.close() == [(None, b'{"x": 1}')]


@pytest.mark.parametrize(
    "garbage", [b"<html>oops</html>\n", b'{"choices": []}\n', b"HTTP/1.1 502 Bad Gateway\r\n"]
)
def test_sse_rejects_lines_that_are_no_field(garbage: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\n" + garbage) is None
    assert decoder.problem.startswith("malformed SSE")


def test_sse_rejects_garbage_left_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\n{not sse") == [(None, b"1")]
    assert decoder.close() is None


# -- errors ----------------------------------------------------------------------------------


def test_scrub_removes_the_key_and_bounds_the_text() -> None:
    up = upstream()
    assert scrub(up, f"bad key {KEY}\n  here") == "bad key *** here"
    assert len(scrub(up, "x" * 5000)) == 500


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"error": {"message": "openai says no", "type": "x"}}', "openai says no"),
        (
            b'{"type": "error", "error": {"type": "x", "message": "claude says no"}}',
            "claude says no",
        ),
        (b'[{"error": {"code": 400, "message": "gemini says no"}}]', "gemini says no"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"detail": "fastapi says no"}', "fastapi says no"),
        (b'{"object": "error", "message": "vllm says no"}', "vllm says no"),
        (b"<html>nginx</html>", "<html>nginx</html>"),
    ],
)
def test_http_error_quotes_the_upstream_message(raw: bytes, message: str) -> None:
    err = http_error(upstream(), 418, {}, raw)
    assert err.message == f"backend ns/backend: upstream returned HTTP 418: {message}"
    assert err.kind is FailureKind.CLIENT and err.status == 418


def test_http_error_retry_after_header_seconds_or_ms() -> None:
    assert http_error(upstream(), 429, {"retry-after": "3"}, b"").retry_after == 3.0
    assert http_error(upstream(), 503, {"retry-after-ms": "250"}, b"").retry_after == 0.25
    assert http_error(upstream(), 503, {}, b"{}").kind is FailureKind.SERVER


def test_gemini_error_details() -> None:
    info = gemini_error_info(
        {
            "error": {
                "code": 400,
                "message": "API key not valid.",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"},
                ],
            }
        }
    )
    assert (info.message, info.kind, info.retry_after) == (
        "API key not valid.",
        FailureKind.AUTH,
        12,
    )


def test_anthropic_error_event_kinds() -> None:
    event = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    err = anthropic_stream_error(upstream(), event)
    assert (err.kind, err.status) == (FailureKind.SERVER, 529)


@pytest.mark.parametrize(
    ("exc", "responded", "kind"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), False, FailureKind.CONNECT),
        (aiohttp.SocketTimeoutError("read"), True, FailureKind.TIMEOUT),
        (TimeoutError(), False, FailureKind.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), False, FailureKind.CONNECT),
        (aiohttp.ServerDisconnectedError(), True, FailureKind.SERVER),
        (aiohttp.ClientPayloadError("cut"), True, FailureKind.SERVER),
        (aiohttp.ClientOSError(104, "reset"), False, FailureKind.CONNECT),
    ],
)
def test_exception_mapping(exc: BaseException, responded: bool, kind: FailureKind) -> None:
    err = exception_error(upstream(), exc, responded)
    assert err.kind is kind
    assert err.message.startswith("backend ns/backend: ")


def test_per_upstream_cache_is_bounded_and_keyed_by_the_whole_upstream() -> None:
    built: list[str | None] = []

    def build(up: Upstream) -> str | None:
        built.append(up.api_key)
        return up.api_key

    cache: PerUpstream[str | None] = PerUpstream(build, maxsize=2)
    a, b = upstream(), upstream(api_version="v2")
    assert cache.get(a) == KEY and cache.get(a) == KEY
    assert len(built) == 1
    cache.get(b)
    cache.get(upstream(api_version="v3"))  # full: cleared, then stored
    assert len(built) == 3
    assert len(cache._items) == 1


def test_sse_long_lines_across_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    line = b"data: " + b"x" * 100_000 + b"\n\n"
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(line), 1000):
        got = decoder.feed(line[i : i + 1000])
        assert got is not None
        events += got
    assert events == [(None, b"x" * 100_000)]

    monkeypatch.setattr(_transport, "MAX_SSE_LINE", 50_000)
    decoder = SSEDecoder()
    results = [decoder.feed(line[i : i + 1000]) for i in range(0, 60_000, 1000)]
    assert results[-1] is None and decoder.problem == "malformed SSE: line too long"
