"""HTTP plumbing shared by the network adapters: one POST, one SSE stream, one error mapping.

Every aiohttp failure becomes an :class:`UpstreamError` here, so adapters only translate
bodies. The phase decides the kind: before the response headers arrive a refused, reset or
dropped connection is ``CONNECT`` (the upstream never saw or never answered the request);
after them it is ``SERVER``. Timeouts are ``TIMEOUT`` except the connect timeout, which is
``CONNECT`` (like Envoy's ``connect-failure``). Messages name the backend and quote the
upstream's own error message; the API key is scrubbed from anything quoted.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .base import (
    CallOptions,
    FailureKind,
    Json,
    Upstream,
    UpstreamError,
    failure_for_status,
    parse_retry_after,
)

T = TypeVar("T")

JSON_CONTENT_TYPE = "application/json"
MAX_SSE_LINE = 16 * 1024 * 1024
"""A single SSE line longer than this is treated as a protocol violation."""
_MAX_QUOTED = 500
"""Longest upstream error message quoted in an UpstreamError."""

ErrorParser = Callable[[Any], "ErrorInfo"]


class ErrorInfo:
    """What a provider's error JSON says: a message, and optionally a kind or retry hint."""

    __slots__ = ("kind", "message", "retry_after")

    def __init__(
        self,
        message: str | None = None,
        kind: FailureKind | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


class PerUpstream(Generic[T]):
    """A small bounded cache of values derived from an :class:`Upstream` (URLs, headers).

    Keyed by the Upstream itself (a frozen dataclass: a rotated key is a new entry), cleared
    wholesale when full, so it never grows with traffic — only with configuration.
    """

    __slots__ = ("_build", "_items", "_maxsize")

    def __init__(self, build: Callable[[Upstream], T], maxsize: int = 256) -> None:
        self._build = build
        self._items: dict[Upstream, T] = {}
        self._maxsize = maxsize

    def get(self, up: Upstream) -> T:
        try:
            return self._items[up]
        except KeyError:
            pass
        if len(self._items) >= self._maxsize:
            self._items.clear()
        value = self._items[up] = self._build(up)
        return value


# -- messages --------------------------------------------------------------------------------


def scrub(up: Upstream, text: str) -> str:
    """One line, bounded, without the backend's key."""
    if up.api_key and up.api_key in text:
        text = text.replace(up.api_key, "***")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


def error(
    up: Upstream,
    kind: FailureKind,
    what: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    return UpstreamError(
        kind, f"backend {up.backend_id}: {scrub(up, what)}", status=status, retry_after=retry_after
    )


def protocol_error(up: Upstream, what: str) -> UpstreamError:
    return error(up, FailureKind.PROTOCOL, what)


def generic_error_info(payload: Any) -> ErrorInfo:
    """Message from the usual error bodies: ``{"error": {"message"}}`` (OpenAI, Azure,
    Anthropic, Gemini), ``{"error": "..."}``, ``{"message"}``, ``{"detail"}`` (FastAPI
    servers), or a one-element list of those (Gemini streams)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return ErrorInfo()
    err = payload.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        return ErrorInfo(msg if isinstance(msg, str) else None)
    if isinstance(err, str):
        return ErrorInfo(err)
    for key in ("message", "detail"):
        msg = payload.get(key)
        if isinstance(msg, str):
            return ErrorInfo(msg)
    return ErrorInfo()


def http_error(
    up: Upstream,
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    parse: ErrorParser = generic_error_info,
) -> UpstreamError:
    """The UpstreamError for an HTTP error response, with the upstream's own message."""
    try:
        info = parse(orjson.loads(raw))
    except orjson.JSONDecodeError:
        info = ErrorInfo(raw[:_MAX_QUOTED].decode("utf-8", "replace") if raw else None)
    kind = info.kind or failure_for_status(status)
    retry_after = parse_retry_after(headers)
    if retry_after is None:
        retry_after = info.retry_after
    detail = f": {info.message}" if info.message else ""
    return error(
        up, kind, f"upstream returned HTTP {status}{detail}", status=status, retry_after=retry_after
    )


def exception_error(up: Upstream, exc: BaseException, responded: bool) -> UpstreamError:
    """Map an aiohttp/asyncio exception, raised before (``responded=False``) or after the
    response headers arrived."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return error(up, FailureKind.CONNECT, f"connect timeout ({name})")
    if isinstance(exc, TimeoutError):
        phase = "while streaming the response" if responded else "waiting for the response"
        return error(up, FailureKind.TIMEOUT, f"upstream timed out {phase} ({name})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error(up, FailureKind.CONNECT, f"cannot connect to upstream: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):  # an unparseable HTTP response
        return error(up, FailureKind.PROTOCOL, f"malformed HTTP response ({name}: {exc.message})")
    if responded:
        return error(up, FailureKind.SERVER, f"upstream connection lost mid-response ({name})")
    return error(up, FailureKind.CONNECT, f"upstream connection failed before a response ({name})")


def loads(up: Upstream, raw: bytes | str, what: str = "response") -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise protocol_error(up, f"malformed JSON in upstream {what}: {exc}") from None


def loads_object(up: Upstream, raw: bytes | str, what: str = "response") -> Json:
    value = loads(up, raw, what)
    if not isinstance(value, dict):
        raise protocol_error(up, f"upstream {what} is not a JSON object")
    return value


# -- requests --------------------------------------------------------------------------------


_W3C = TraceContextTextMapPropagator()


def _outgoing(up: Upstream, headers: Mapping[str, str]) -> Mapping[str, str]:
    """The request headers, plus ``traceparent`` of the current span (the attempt's) when
    tracing is on. Done here, not with an aiohttp TraceConfig: that costs every request
    the signal machinery of all its trace events."""
    if not up.propagate_trace:
        return headers
    out = dict(headers)
    _W3C.inject(out)
    return out


async def post_json(
    up: Upstream,
    url: str,
    headers: Mapping[str, str],
    payload: Json,
    opts: CallOptions,
    parse_error: ErrorParser = generic_error_info,
) -> Json:
    """POST ``payload`` as JSON and return the JSON object answered."""
    timeout = aiohttp.ClientTimeout(total=opts.timeout, sock_connect=up.connect_timeout)
    responded = False
    try:
        async with up.session.post(
            url, data=orjson.dumps(payload), headers=_outgoing(up, headers), timeout=timeout
        ) as resp:
            responded = True
            raw = await resp.read()
            if resp.status >= 300:
                raise http_error(up, resp.status, resp.headers, raw, parse_error)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise exception_error(up, exc, responded) from None
    return loads_object(up, raw)


async def post_sse(
    up: Upstream,
    url: str,
    headers: Mapping[str, str],
    payload: Json,
    opts: CallOptions,
    parse_error: ErrorParser = generic_error_info,
) -> AsyncGenerator[tuple[str | None, bytes], None]:
    """POST ``payload`` and yield the answer's server-sent events as ``(event, data)``,
    each as soon as it is complete. Reads to the end of the body so the connection goes
    back to the pool. Close it with ``contextlib.aclosing`` when stopping early."""
    timeout = aiohttp.ClientTimeout(
        total=opts.timeout, sock_connect=up.connect_timeout, sock_read=opts.idle_timeout
    )
    responded = False
    try:
        async with up.session.post(
            url, data=orjson.dumps(payload), headers=_outgoing(up, headers), timeout=timeout
        ) as resp:
            responded = True
            if resp.status >= 300:
                raw = await resp.read()
                raise http_error(up, resp.status, resp.headers, raw, parse_error)
            decoder = SSEDecoder()
            async for block in resp.content.iter_any():
                events = decoder.feed(block)
                if events is None:
                    raise protocol_error(up, decoder.problem)
                for event in events:
                    yield event
            events = decoder.close()
            if events is None:
                raise protocol_error(up, decoder.problem)
            for event in events:
                yield event
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise exception_error(up, exc, responded) from None


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder (LF or CRLF line ends).

    ``feed`` returns the events completed by a block of bytes, or ``None`` when the bytes
    are not an event stream (a line that is no SSE field, or an endless line); ``problem``
    then says why. Comment lines (``:``) and ``id``/``retry`` fields are skipped.
    """

    __slots__ = ("_data", "_event", "_partial", "_partial_size", "problem")

    def __init__(self) -> None:
        self._partial: list[bytes] = []
        """Bytes of the current, unfinished line (kept as parts: no quadratic copying)."""
        self._partial_size = 0
        self._event: str | None = None
        self._data: list[bytes] = []
        self.problem = ""

    def feed(self, block: bytes) -> list[tuple[str | None, bytes]] | None:
        if b"\n" not in block:
            self._partial.append(block)
            self._partial_size += len(block)
            if self._partial_size > MAX_SSE_LINE:
                self.problem = "malformed SSE: line too long"
                return None
            return []
        if self._partial:
            self._partial.append(block)
            block = b"".join(self._partial)
            self._partial.clear()
        lines = block.split(b"\n")
        rest = lines.pop()
        self._partial_size = len(rest)
        if rest:
            self._partial.append(rest)
        out: list[tuple[str | None, bytes]] = []
        for line in lines:
            if not self._line(line, out):
                return None
        return out

    def close(self) -> list[tuple[str | None, bytes]] | None:
        """Events left at the end of the body (a last event without its blank line)."""
        out: list[tuple[str | None, bytes]] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            if not self._line(line, out):
                return None
        if self._data:
            out.append((self._event, b"\n".join(self._data)))
            self._data = []
        return out

    def _line(self, line: bytes, out: list[tuple[str | None, bytes]]) -> bool:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                out.append((self._event, b"\n".join(self._data)))
                self._data = []
            self._event = None
            return True
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            return True
        if line.startswith(b":"):
            return True
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self._event = value.decode("utf-8", "replace")
            return True
        if field == b"data":
            self._data.append(value)
            return True
        if field in (b"id", b"retry"):
            return True
        shown = line[:80].decode("utf-8", "replace")
        self.problem = f"malformed SSE: unexpected line {shown!r}"
        return False


def usage_chunk(
    chunk_id: str, created: int, model: str, usage: Json, obj: str = "chat.completion.chunk"
) -> Json:
    """The final streamed chunk that carries usage: ``choices`` is ``[]``."""
    return {
        "id": chunk_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def make_usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def as_int(value: Any) -> int:
    return value if isinstance(value, int) else 0
