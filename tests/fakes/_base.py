"""Shared machinery of the fake upstreams: the server, the script of faults, the recording."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import orjson
from aiohttp import web

Json = dict[str, Any]

DEFAULT_TEXT = "Hello from the fake upstream."
"""The reply when a script step does not say otherwise (5 words)."""
DEFAULT_PROMPT_TOKENS = 12
"""Prompt tokens reported when a script step does not say otherwise."""
DEFAULT_DIMENSIONS = 8
"""Embedding length when the request does not ask for ``dimensions``."""


def fake_embedding(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fakes' embedding of ``text``: bytes of SHA-256 scaled to 0..1."""
    raw = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    return [b / 255 for b in raw[:dimensions]]


FaultKind = Literal[
    "ok",
    "status",
    "hang",
    "reset",
    "disconnect",
    "truncate",
    "malformed_json",
    "malformed_sse",
    "stream_error",
]


@dataclass(frozen=True)
class ToolCall:
    """A function call the fake model makes. ``id`` defaults to a provider-styled one."""

    name: str
    arguments: Json = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, eq=False)
class Fault:
    """What the fake does with one request. Build with the class methods.

    ``after`` counts the SSE frames of the normal answer sent before a mid-stream fault
    strikes (every frame counts: OpenAI's role chunk, Anthropic's ``message_start`` and
    ``ping``...). ``None`` means "before the response headers".
    """

    kind: FaultKind = "ok"
    code: int = 200
    message: str | None = None
    error_type: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    after: int | None = None
    delay: float = 0.0
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    event_delay: float = 0.0
    pause_after: int | None = None

    @classmethod
    def ok(
        cls,
        text: str | None = None,
        *,
        tool_calls: tuple[ToolCall, ...] | list[ToolCall] = (),
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_tokens: int = 0,
        delay: float = 0.0,
        event_delay: float = 0.0,
        pause_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """A success. ``text`` defaults to :data:`DEFAULT_TEXT` (``""`` for none);
        ``finish_reason`` is OpenAI's name (stop, length, tool_calls, content_filter) or the
        provider's own; usage defaults to :data:`DEFAULT_PROMPT_TOKENS` and one completion
        token per word and per tool call. ``delay`` waits before answering; streams wait
        ``event_delay`` between frames and, with ``pause_after=N``, stop after N frames
        until :meth:`FakeUpstream.resume`."""
        return cls(
            "ok",
            text=text,
            tool_calls=tuple(tool_calls),
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            delay=delay,
            event_delay=event_delay,
            pause_after=pause_after,
            headers=dict(headers or {}),
        )

    @classmethod
    def status(
        cls,
        code: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """An HTTP error in the provider's own error JSON. ``error_type`` overrides the
        provider's type/status string; ``retry_after`` is rendered the provider's way
        (Retry-After header; Gemini: a RetryInfo detail)."""
        return cls(
            "status",
            code=code,
            message=message,
            error_type=error_type,
            retry_after=retry_after,
            headers=dict(headers or {}),
        )

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0, message: str | None = None) -> Fault:
        """429 with the provider's retry hint."""
        return cls.status(429, message, retry_after=retry_after)

    @classmethod
    def slow(cls, seconds: float, text: str | None = None) -> Fault:
        """A success that starts after ``seconds``."""
        return cls.ok(text, delay=seconds)

    @classmethod
    def hang(cls, after: int | None = None) -> Fault:
        """Never answer (``after=None``), or stall a stream after ``after`` frames. The
        connection stays open until the client gives up or the fake stops."""
        return cls("hang", after=after)

    @classmethod
    def reset(cls, after: int | None = None) -> Fault:
        """Reset the connection (TCP RST): before any response (``after=None``), or after
        ``after`` stream frames (for a non-streaming request: after half the body)."""
        return cls("reset", after=after)

    @classmethod
    def disconnect(cls, after: int | None = 1) -> Fault:
        """Close the connection cleanly (FIN) without finishing the answer: before any
        response (``after=None``), after ``after`` stream frames, or (non-streaming) after
        half the body."""
        return cls("disconnect", after=after)

    @classmethod
    def truncate(cls, after: int = 1) -> Fault:
        """End a stream properly (complete HTTP body) after ``after`` frames, before the
        provider's end marker: an answer cut short by a misbehaving upstream or proxy.
        For a non-streaming request: a complete response whose JSON is cut in half."""
        return cls("truncate", after=after)

    @classmethod
    def malformed_json(cls, after: int = 0) -> Fault:
        """A truncated JSON body (non-streaming), or after ``after`` frames an SSE event
        whose data is not JSON (streaming)."""
        return cls("malformed_json", after=after)

    @classmethod
    def malformed_sse(cls, after: int = 0) -> Fault:
        """After ``after`` frames, a line that is no SSE at all (an HTML error page);
        for a non-streaming request the same HTML as the whole 200 body."""
        return cls("malformed_sse", after=after)

    @classmethod
    def stream_error(
        cls,
        after: int = 1,
        *,
        code: int = 500,
        error_type: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """After ``after`` frames, the provider's in-stream error event (OpenAI/Gemini:
        ``data: {"error": ...}``; Anthropic: ``event: error``) and the end of the stream.
        For a non-streaming request: the HTTP error ``code``."""
        return cls("stream_error", code=code, error_type=error_type, message=message, after=after)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    """Without the query string."""
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any
    """The parsed JSON body, or None."""
    raw: bytes
    peer_port: int | None = None
    """The client's source port: equal ports mean a reused (pooled) connection."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Operation:
    """What a request asks for, as the fake understood it."""

    kind: Literal["chat", "completion", "embeddings", "models"]
    model: str
    stream: bool = False
    variant: str = ""
    """Provider detail (e.g. ``azure``, Gemini's method name)."""


class _Stopped(Exception):
    pass


class FakeUpstream:
    """A real aiohttp server on 127.0.0.1 speaking one provider's wire format.

    Use as ``async with FakeX() as fake`` (same event loop as the client), or
    ``with FakeX().serve_in_thread() as fake`` (own loop in a daemon thread, for sync
    clients). ``fake.script(...)`` queues one :class:`Fault` per coming request; when the
    queue is empty ``fake.default`` (``Fault.ok()``) answers. Every request is appended to
    ``fake.requests`` before it is answered.
    """

    provider: ClassVar[str] = ""
    version_path: ClassVar[str] = ""
    default_model: ClassVar[str] = "fake-model"

    def __init__(self, *, api_key: str | None = None, models: tuple[str, ...] = ()) -> None:
        self.api_key = api_key
        """When set, requests must carry it the provider's way, else the provider's 401."""
        self.models = models or (self.default_model,)
        self.requests: list[RecordedRequest] = []
        self.default = Fault.ok()
        self._script: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self.port = 0

    # -- public API ---------------------------------------------------------------------

    @property
    def root(self) -> str:
        """``http://127.0.0.1:PORT``"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The provider base URL to configure (``Upstream.base_url``, ModelBackend endpoint)."""
        return self.root + self.version_path

    def script(self, *faults: Fault) -> None:
        """Queue one fault per coming request, in order."""
        self._script.extend(faults)

    @property
    def pending(self) -> int:
        """Scripted faults not used yet."""
        return len(self._script)

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def clear(self) -> None:
        """Forget recorded requests and queued faults."""
        self.requests.clear()
        self._script.clear()

    def resume(self) -> None:
        """Let streams paused by ``Fault.ok(pause_after=N)`` go on (thread-safe)."""
        loop, event = self._loop, self._resume
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._resume = asyncio.Event()
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def serve_in_thread(self, timeout: float = 10.0) -> Iterator[Self]:
        """Run the fake on its own event loop in a daemon thread."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"fake-{self.provider}")
        thread.daemon = True
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            loop.close()

    # -- provider hooks -----------------------------------------------------------------

    def operation(self, request: web.Request, body: Any) -> Operation | None:
        """What the request asks for, or None for an unknown path (404)."""
        raise NotImplementedError

    def auth_error(self, request: web.Request, op: Operation) -> web.Response | None:
        raise NotImplementedError

    def invalid(self, request: web.Request, op: Operation, body: Any) -> web.Response | None:
        """The provider's 400 for a body it would refuse, else None."""
        return None

    def error_response(
        self, fault: Fault, op: Operation | None, code: int | None = None
    ) -> web.Response:
        raise NotImplementedError

    def success(self, op: Operation, body: Any, fault: Fault) -> Any:
        raise NotImplementedError

    def frames(self, op: Operation, body: Any, fault: Fault) -> list[bytes]:
        raise NotImplementedError

    def stream_error_frame(self, fault: Fault, op: Operation) -> bytes:
        raise NotImplementedError

    def malformed_json_frame(self, op: Operation) -> bytes:
        return b'data: {"id": "broken", "choices": [{"delta": \n\n'

    def stream_content_type(self, op: Operation) -> str:
        return "text/event-stream"

    # -- helpers for providers ----------------------------------------------------------

    @staticmethod
    def json_response(
        payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            body=orjson.dumps(payload),
            status=status,
            content_type="application/json",
            headers=dict(headers or {}),
        )

    @staticmethod
    def reply_text(fault: Fault) -> str:
        return DEFAULT_TEXT if fault.text is None else fault.text

    @classmethod
    def pieces(cls, fault: Fault) -> list[str]:
        """The reply split for streaming: words, later ones with their leading space."""
        text = cls.reply_text(fault)
        if not text:
            return []
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    @classmethod
    def usage_numbers(cls, fault: Fault) -> tuple[int, int]:
        prompt = DEFAULT_PROMPT_TOKENS if fault.prompt_tokens is None else fault.prompt_tokens
        completion = fault.completion_tokens
        if completion is None:
            completion = len(cls.reply_text(fault).split()) + len(fault.tool_calls)
        return prompt, completion

    # -- the handler --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                raw=raw,
                peer_port=peer[1] if peer else None,
            )
        )
        fault = self._script.popleft() if self._script else self.default
        op = self.operation(request, body)
        try:
            return await self._answer(request, op, body, fault)
        except _Stopped:
            self._abort(request)
            return web.Response(status=503)

    async def _answer(
        self, request: web.Request, op: Operation | None, body: Any, fault: Fault
    ) -> web.StreamResponse:
        if fault.delay:
            await self._sleep(fault.delay)
        kind = fault.kind
        streaming = op is not None and op.stream
        if kind == "hang" and (fault.after is None or not streaming):
            await self._wait(None)
        if kind in ("reset", "disconnect") and fault.after is None:
            self._abort(request, rst=kind == "reset")
            return web.Response(status=500)  # never sent: the connection is gone
        if kind == "status" or (kind == "stream_error" and not streaming):
            return self.error_response(fault, op)
        if op is None:
            return self.error_response(Fault.status(404, "not found"), None)
        refused = self.auth_error(request, op) or self.invalid(request, op, body)
        if refused is not None:
            return refused
        if not streaming:
            return await self._respond(request, op, body, fault)
        return await self._stream(request, op, body, fault)

    async def _respond(
        self, request: web.Request, op: Operation, body: Any, fault: Fault
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "malformed_sse":
            html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(body=html, content_type="text/html")
        data = orjson.dumps(self.success(op, body, fault))
        if kind in ("malformed_json", "truncate"):
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        if kind in ("reset", "disconnect"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.02)
            self._abort(request, rst=kind == "reset")
            return resp
        return web.Response(body=data, content_type="application/json", headers=fault.headers)

    async def _stream(
        self, request: web.Request, op: Operation, body: Any, fault: Fault
    ) -> web.StreamResponse:
        frames = self.frames(op, body, fault)
        headers = {"Content-Type": self.stream_content_type(op), "Cache-Control": "no-cache"}
        resp = web.StreamResponse(headers={**headers, **fault.headers})
        await resp.prepare(request)
        kind = fault.kind
        count = len(frames) if kind == "ok" else min(fault.after or 0, len(frames))
        for i, frame in enumerate(frames[:count]):
            if fault.pause_after is not None and i == fault.pause_after:
                await self._wait(self._resume)
            if fault.event_delay and i:
                await self._sleep(fault.event_delay)
            await resp.write(frame)
        if kind == "hang":
            await self._wait(None)
        elif kind in ("reset", "disconnect"):
            await asyncio.sleep(0.02)  # let the client read what was sent
            self._abort(request, rst=kind == "reset")
            return resp
        elif kind == "malformed_json":
            await resp.write(self.malformed_json_frame(op))
        elif kind == "malformed_sse":
            await resp.write(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n\n")
        elif kind == "stream_error":
            await resp.write(self.stream_error_frame(fault, op))
        await resp.write_eof()
        return resp

    # -- low level ----------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise _Stopped

    async def _wait(self, event: asyncio.Event | None) -> None:
        """Until ``event`` is set (None: forever), or the fake stops (raises _Stopped)."""
        assert self._stopping is not None
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if event is not None:
            waiters.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._stopping.is_set():
            raise _Stopped

    @staticmethod
    def _abort(request: web.Request, rst: bool = True) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if rst:
            transport.abort()
        else:
            transport.close()
