"""The protocol-agnostic gateway: who is calling, which route, the policy pipeline, the call.

HTTP (``http.py``) and gRPC (``grpc_service.py``) are thin translations onto this, so both
have the same authentication, routing, policies and errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any

from kanal.gateway import validate
from kanal.gateway.auth import Authenticator
from kanal.gateway.errors import GatewayError, from_upstream
from kanal.gateway.policy import PIPELINE, Call, Caller, Outcome, Policy, Usage
from kanal.gateway.policy.budget import BudgetPolicy
from kanal.gateway.policy.context import ContextPolicy
from kanal.gateway.providers.base import (
    CallOptions,
    FailureKind,
    ProviderAdapter,
    Upstream,
    UpstreamError,
)
from kanal.gateway.router import Router, Trace
from kanal.gateway.runtime import BackendState, Runtime
from kanal.gateway.spans import Tracer, current_span, recording, traced
from kanal.gateway.stores import Stores
from kanal.gateway.telemetry import Telemetry, build_sinks
from kanal.gateway.tokens import estimate_prompt, estimate_text
from kanal.snapshot import RouteConfig, Snapshot, Target

log = logging.getLogger("kanal.gateway")
Json = dict[str, Any]
DEFAULT_MAX_OUTPUT = 4096
"""Output cap assumed for reservations when neither request nor model says."""

__all__ = ["Call", "Caller", "Gateway", "Operation", "Outcome"]


class Operation(Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"


_VALIDATE: dict[Operation, Callable[[Json], str]] = {
    Operation.CHAT: validate.chat,
    Operation.COMPLETION: validate.completion,
    Operation.EMBEDDINGS: validate.embeddings,
}


def _unary(
    op: str, adapter: ProviderAdapter
) -> Callable[[Upstream, Json, CallOptions], Awaitable[Json]]:
    if op == "chat":
        return adapter.chat
    if op == "completion":
        return adapter.completion
    return adapter.embeddings


def _streaming(
    op: str, adapter: ProviderAdapter
) -> Callable[[Upstream, Json, CallOptions], AsyncIterator[Json]]:
    if op == "chat":
        return adapter.chat_stream
    if op == "completion":
        return adapter.completion_stream
    raise GatewayError(400, "embeddings cannot be streamed", param="stream")


def usage_of(response: Json) -> Usage | None:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return Usage(prompt, completion, "provider")


def _finish_reason(response: Json) -> str | None:
    choices = response.get("choices") or []
    reason = choices[0].get("finish_reason") if choices else None
    return reason if isinstance(reason, str) else None


def text_of(response: Json) -> str:
    choices = response.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


class Gateway:
    def __init__(
        self, runtime: Runtime, router: Router | None = None, stores: Stores | None = None
    ) -> None:
        self.runtime = runtime
        self.router = router or Router(runtime)
        self.stores = stores or Stores(runtime.settings)
        self.auth = Authenticator(runtime.settings)
        self.policies: tuple[Policy, ...] = tuple(cls(self.stores) for cls in PIPELINE)
        for policy in self.policies:
            policy.bind(self)
        self._chains: dict[str, tuple[Policy, ...]] = {}
        self._chains_of: Snapshot | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.telemetry = Telemetry(build_sinks(runtime, self.stores))
        """Sinks of the per-request records (metrics, usage events, logs, traces)."""

    @property
    def context(self) -> ContextPolicy:
        """The conversation-context policy, which also serves the sessions API."""
        return next(p for p in self.policies if isinstance(p, ContextPolicy))

    @property
    def budget(self) -> BudgetPolicy:
        """The budget policy, which also reports spend."""
        return next(p for p in self.policies if isinstance(p, BudgetPolicy))

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for policy in self.policies:
            await policy.close()
        await self.auth.close()
        await self.telemetry.close()
        await self.stores.close()

    # -- callers and routes ---------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        return await self.auth.authenticate(self.runtime.snapshot, authorization)

    def resolve(self, caller: Caller, model: str) -> RouteConfig:
        route = self.runtime.snapshot.by_tenant_model.get((caller.tenant, model))
        if route is None:
            raise GatewayError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return route

    def authorize(self, caller: Caller, route: RouteConfig) -> None:
        """LlmRoute.access beyond namespaces: ServiceAccounts and API key labels (403)."""
        access = route.access
        if access is None:
            return
        accounts = access.service_accounts or []
        selector = (
            (access.api_key_secret_selector.match_labels or {})
            if (access.api_key_secret_selector)
            else {}
        )
        if not accounts and not selector:
            return
        if caller.service_account and caller.service_account in accounts:
            return
        if caller.key and selector and selector.items() <= dict(caller.key_labels).items():
            return
        rules = []
        if accounts:
            rules.append(f"ServiceAccounts {', '.join(accounts)}")
        if selector:
            labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            rules.append(f"API keys labelled {labels}")
        raise GatewayError(
            403,
            f"LlmRoute {route.id} access admits only {' or '.join(rules)}; "
            f"this caller ({caller.id}) is not one of them",
            code="access_denied",
        )

    def models(self, caller: Caller) -> list[RouteConfig]:
        return self.runtime.snapshot.models_for(caller.tenant)

    def chain(self, route: RouteConfig) -> tuple[Policy, ...]:
        snapshot = self.runtime.snapshot
        if self._chains_of is not snapshot:
            self._chains, self._chains_of = {}, snapshot
        chain = self._chains.get(route.id)
        if chain is None:
            chain = tuple(p for p in self.policies if p.enabled(route))
            self._chains[route.id] = chain
        return chain

    # -- calls ----------------------------------------------------------------------------

    def prepare(
        self,
        op: Operation,
        caller: Caller,
        body: Json,
        *,
        request_id: str,
        session_id: str | None = None,
        cache_bypass: bool = False,
    ) -> Call:
        """Validate the body, find its route, check access (400/403/404 before any work)."""
        route = self.resolve(caller, _VALIDATE[op](body))
        self.authorize(caller, route)
        call = Call(
            op=op.value,
            caller=caller,
            route=route,
            body=body,
            request_id=request_id,
            session_id=session_id,
            stream=bool(body.get("stream")),
            cache_bypass=cache_bypass,
        )
        if self.chain(route):  # estimates only feed policies
            call.estimated_prompt_tokens = estimate_prompt(call.op, body)
            call.max_output_tokens = self._max_output(route, body)
        return call

    def _max_output(self, route: RouteConfig, body: Json) -> int:
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(asked, int) and asked > 0:
            return asked
        limits = []
        backends = self.runtime.snapshot.backends
        for tier in route.tiers:
            for target in tier.targets:
                backend = backends.get(target.backend)
                info = backend.models.get(target.model) if backend else None
                if info is not None and info.max_output_tokens:
                    limits.append(info.max_output_tokens)
        return max(limits) if limits else DEFAULT_MAX_OUTPUT

    async def call(self, call: Call, trace: Trace) -> Json:
        ran: list[Policy] = []
        outcome = call.outcome = Outcome()
        try:
            answer = await self._before(call, ran)
            if answer is not None:
                outcome.response, outcome.text = answer, text_of(answer)
                outcome.usage, outcome.completed, outcome.cached = usage_of(answer), True, True
                return answer
            result = await self._route_unary(call, trace)
            outcome.response, outcome.text, outcome.completed = result, text_of(result), True
            outcome.finish_reason = _finish_reason(result)
            outcome.usage = usage_of(result) or self._estimate(call, outcome.text)
            outcome.backend, outcome.model = trace.backend, trace.model
            return result
        except GatewayError as err:
            outcome.error = err
            raise
        finally:
            if ran:
                await self._after(ran, call, outcome)

    async def _before(self, call: Call, ran: list[Policy]) -> Json | None:
        """The chain's ``before`` hooks in order, each one that ran added to ``ran``; the
        first answer (the cache's) ends it."""
        chain = self.chain(call.route)
        if not chain:  # the common fast path: no policy on this route
            return None
        tracer = recording(self.runtime.tracer)
        for policy in chain:
            answer = await (
                policy.before(call) if tracer is None else _traced_before(tracer, policy, call)
            )
            ran.append(policy)
            if answer is not None:
                return answer
        return None

    async def _route_unary(self, call: Call, trace: Trace) -> Json:
        body = call.body

        async def attempt(state: BackendState, target: Target, timeout: float) -> Json:
            return await _unary(call.op, state.adapter)(
                state.upstream, {**body, "model": target.model}, CallOptions(timeout=timeout)
            )

        return await self.router.run(call.route, attempt, trace, operation=call.op)

    def _estimate(self, call: Call, text: str) -> Usage:
        prompt = call.estimated_prompt_tokens or estimate_prompt(call.op, call.body)
        return Usage(prompt, estimate_text(text), "estimated")

    async def _after(self, ran: list[Policy], call: Call, outcome: Outcome) -> None:
        """Run the ``after`` hooks even if the caller went away: shielded from cancellation."""
        task = asyncio.ensure_future(self._run_after(ran, call, outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def _run_after(self, ran: list[Policy], call: Call, outcome: Outcome) -> None:
        tracer = recording(self.runtime.tracer)
        for policy in reversed(ran):
            try:
                if tracer is None:
                    await policy.after(call, outcome)
                else:
                    await traced(
                        tracer,
                        f"kanal.policy.{policy.name}",
                        policy.after(call, outcome),
                        {"kanal.policy.phase": "after"},
                    )
            except Exception:  # one policy's trouble must not stop the others settling
                log.exception("policy %s failed after request %s", policy.name, call.request_id)

    async def open_stream(self, call: Call, trace: Trace) -> AsyncIterator[Json]:
        """Policies, then routing until one backend produced its first chunk; then that
        backend only. A failure after the first chunk is raised from the iterator (the
        protocol layer reports it in-stream); it never switches backends mid-answer."""
        ran: list[Policy] = []
        try:
            answer = await self._before(call, ran)
            if answer is not None:
                return self._replay(answer, call, ran)
            first, chunks, state = await self._route_stream(call, trace)
        except GatewayError as err:
            call.outcome = Outcome(error=err)
            if ran:
                await self._after(ran, call, call.outcome)
            raise
        except BaseException:
            call.outcome = Outcome()
            if ran:
                await self._after(ran, call, call.outcome)
            raise
        return self._relay(first, chunks, trace, state, call, ran)

    async def _route_stream(
        self, call: Call, trace: Trace
    ) -> tuple[Json, AsyncIterator[Json], BackendState]:
        idle = self.runtime.settings.stream_idle_timeout
        body = call.body

        async def attempt(
            state: BackendState, target: Target, timeout: float
        ) -> tuple[Json, AsyncIterator[Json], BackendState]:
            chunks = _streaming(call.op, state.adapter)(
                state.upstream,
                {**body, "model": target.model},
                CallOptions(timeout=timeout, idle_timeout=idle),
            )
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(
                    FailureKind.PROTOCOL, f"backend {state.config.id}: stream ended before any data"
                ) from None
            except BaseException:
                await _close(chunks)
                raise
            return first, chunks, state

        return await self.router.run(call.route, attempt, trace, stream=True, operation=call.op)

    async def _relay(
        self,
        first: Json,
        chunks: AsyncIterator[Json],
        trace: Trace,
        state: BackendState,
        call: Call,
        ran: list[Policy],
    ) -> AsyncIterator[Json]:
        outcome = call.outcome = Outcome(backend=trace.backend, model=trace.model)
        parts: list[str] = []
        calls: dict[int, Json] = {}
        finished = False
        chunk = first
        try:
            while True:
                finished = _collect(chunk, parts, outcome, calls if ran else None) or finished
                yield chunk
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
            outcome.completed = finished
        except UpstreamError as err:
            state.record_failure(err, asyncio.get_running_loop().time(), self.runtime.settings)
            outcome.error = from_upstream(err, model=call.route.model)
            raise
        finally:
            trace.done()
            await _close(chunks)
            outcome.text = "".join(parts)
            if outcome.usage is None:  # bill what was produced, even if cut short
                outcome.usage = self._estimate(call, outcome.text)
            if ran:
                if calls and call.op == "chat":  # the answer only exists whole as a message
                    outcome.response = _streamed_tool_answer(first, outcome, calls)
                await self._after(ran, call, outcome)

    async def _replay(self, answer: Json, call: Call, ran: list[Policy]) -> AsyncIterator[Json]:
        """A complete answer (from the cache) sent as a stream of chunks."""
        outcome = call.outcome = Outcome(
            response=answer,
            text=text_of(answer),
            usage=usage_of(answer),
            cached=True,
            finish_reason=_finish_reason(answer),
        )
        try:
            for chunk in replay_chunks(call.op, answer):
                yield chunk
            outcome.completed = True
        finally:
            await self._after(ran, call, outcome)


async def _traced_before(tracer: Tracer, policy: Policy, call: Call) -> Json | None:
    """A policy's ``before`` in a span ``kanal.policy.<name>`` (tracing on only)."""
    with current_span(
        tracer, f"kanal.policy.{policy.name}", attributes={"kanal.policy.phase": "before"}
    ) as span:
        answer = await policy.before(call)
        if answer is not None:
            span.set_attribute("kanal.policy.answered", True)  # the cache answered
        return answer


def _collect(
    chunk: Json, parts: list[str], outcome: Outcome, calls: dict[int, Json] | None = None
) -> bool:
    """Accumulate text, usage and (when ``calls`` is given) tool-call deltas from one chunk;
    True when it carries a finish_reason."""
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        outcome.usage = Usage(
            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        )
    finished = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(piece, str):
            parts.append(piece)
        if calls is not None and isinstance(delta, dict) and delta.get("tool_calls"):
            _merge_tool_calls(calls, delta["tool_calls"])
        if choice.get("finish_reason"):
            outcome.finish_reason = choice["finish_reason"]
            finished = True
    return finished


def _merge_tool_calls(calls: dict[int, Json], deltas: Any) -> None:
    """Stream deltas of tool calls -> whole calls (ids and names once, arguments appended)."""
    for position, delta in enumerate(deltas if isinstance(deltas, list) else ()):
        if not isinstance(delta, dict):
            continue
        index = delta.get("index", position)
        call = calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"] += function["arguments"]


def _streamed_tool_answer(first: Json, outcome: Outcome, calls: dict[int, Json]) -> Json:
    """The chat.completion a streamed answer with tool calls amounts to."""
    usage = outcome.usage
    answer: Json = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", int(time.time())),
        "model": first.get("model", outcome.model or ""),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": outcome.text or None,
                    "tool_calls": [calls[i] for i in sorted(calls)],
                },
                "finish_reason": outcome.finish_reason or "tool_calls",
            }
        ],
    }
    if usage is not None and usage.source == "provider":
        answer["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    return answer


def replay_chunks(op: str, answer: Json) -> list[Json]:
    """An OpenAI response turned into the chunks a stream of it would have had."""
    base = {
        "id": answer.get("id", ""),
        "created": answer.get("created", int(time.time())),
        "model": answer.get("model", ""),
    }
    choices = answer.get("choices") or [{}]
    choice = choices[0]
    if op == "chat":
        message = choice.get("message") or {}
        kind = "chat.completion.chunk"
        chunks = [
            {
                **base,
                "object": kind,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            },
            {
                **base,
                "object": kind,
                "choices": [
                    {
                        "index": 0,
                        "delta": _delta_of(message),
                        "finish_reason": None,
                    }
                ],
            },
            {
                **base,
                "object": kind,
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}
                ],
            },
        ]
    else:
        kind = "text_completion"
        chunks = [
            {
                **base,
                "object": kind,
                "choices": [
                    {
                        "index": 0,
                        "text": choice.get("text", ""),
                        "finish_reason": choice.get("finish_reason", "stop"),
                    }
                ],
            }
        ]
    if "usage" in answer:
        chunks.append({**base, "object": kind, "choices": [], "usage": answer["usage"]})
    return chunks


def _delta_of(message: Json) -> Json:
    """A whole message as one stream delta; streamed tool calls carry their index."""
    delta = {k: v for k, v in message.items() if k != "role"}
    if isinstance(delta.get("tool_calls"), list):
        delta["tool_calls"] = [
            {**call, "index": i} if isinstance(call, dict) else call
            for i, call in enumerate(delta["tool_calls"])
        ]
    return delta


async def _close(chunks: AsyncIterator[Json]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken upstream stream: nothing left to report
            log.debug("error closing upstream stream", exc_info=True)
