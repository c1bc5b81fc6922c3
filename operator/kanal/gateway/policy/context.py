"""Conversation context: the gateway keeps each session's history and builds the prompt.

A chat request with a session id (``X-Session-Id``; gRPC metadata ``x-session-id``) on a
route with ``context.enabled`` is sent upstream as: the system messages (the route's
``prompt.system``, then the request's own system/developer messages), the running summary
(``strategy: summarize``), the newest stored turns that fit ``context.maxTokens`` — counted
from the token counts stored with each message, newest first, a tool call never separated
from its results (see ``_context_prompt``) — then the request's new messages. Requests
without a session id, and operations other than chat, pass through untouched.

After the answer the request's non-system messages and the assistant's answer are appended
in one atomic step (so concurrent turns of a session lose nothing), the oldest messages are
dropped beyond the gateway's caps (``context_max_turns`` messages, ``context_max_bytes``
bytes), and the session's TTL (``context.ttl``) starts again. Token counts: the offline
estimate for the request's messages, the provider's ``completion_tokens`` for the answer
when it reported usage.

**What an unfinished turn leaves: nothing.** Only a *completed* answer (non-streamed, or a
stream that reached its finish_reason; also one answered from the cache) stores the turn.
An upstream error, a refusal by a later policy, a stream broken by the upstream or
abandoned by the caller, or a caller that went away before the answer leave the session as
it was: the caller did not get (all of) the answer, and will most likely send the same
message again — had the user turn been stored, the retry would appear twice in the history,
and a half answer would mislead every later turn.

Streamed answers store their text. Tool calls are stored from non-streamed answers; a
streamed answer that ends in tool calls is not stored (the stream's calls are not
assembled), so the client sends that assistant message back with the tool results — an
assistant message whose tool call ids are already stored is recognised and not stored twice.

``strategy: summarize``: when the stored messages and the summary exceed ``maxTokens``, a
background task (never on the request path) asks the summarizer model to fold the oldest
turns — until the rest fits half the budget — into the summary, then removes exactly those
messages (by sequence number) and replaces the summary in one atomic step, provided nobody
folded or erased the session meanwhile. Turns appended while the summarizer runs stay.

If the session store (Redis) is unreachable, a request with a session id on such a route is
refused with 503: sending it without its history would answer a different conversation.

Sessions are per (caller tenant, route, session id): another namespace using the same id,
even on the same shared route, has its own session and cannot read or erase this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

from kanal.api import parse_duration
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy._context_prompt import (
    FRAMING,
    SUMMARY_OVERHEAD,
    Prompt,
    assistant_message,
    build_prompt,
    history_budget,
    message_tokens,
    split_request,
)
from kanal.gateway.policy._context_store import (
    Entry,
    History,
    MemorySessionStore,
    RedisSessionStore,
    SessionKey,
    SessionStore,
)
from kanal.gateway.policy._context_summary import needs_fold, plan_fold, summarizer_body
from kanal.gateway.policy.base import Call, Caller, Json, Outcome, Policy
from kanal.gateway.providers.base import CallOptions
from kanal.gateway.stores import REDIS_ERRORS, Stores
from kanal.gateway.tokens import estimate_text
from kanal.snapshot import RouteConfig

log = logging.getLogger("kanal.gateway.context")

SUMMARIZER_TIMEOUT = 120.0
"""Longest a summarizer call may take (bounded by the route's timeout)."""
FOLD_RETRY_SECONDS = 30.0
"""After a failed fold, the route's sessions wait this long before the next attempt."""


@functools.lru_cache(maxsize=256)
def _seconds(duration: str) -> float:
    return parse_duration(duration)


@dataclass(frozen=True, slots=True)
class _Turn:
    key: SessionKey
    prompt: Prompt


def _unavailable(err: BaseException) -> GatewayError:
    return GatewayError(
        503,
        f"the conversation store is unreachable ({type(err).__name__}); "
        "retry later or send the request without X-Session-Id",
        code="context_store_unavailable",
    )


class ContextPolicy(Policy):
    name = "context"

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores)
        self.store: SessionStore = (
            RedisSessionStore(stores.redis) if stores.redis is not None else MemorySessionStore()
        )
        self._folds: dict[SessionKey, asyncio.Task[None]] = {}
        self._fold_paused_until: dict[str, float] = {}

    def enabled(self, route: RouteConfig) -> bool:
        return route.context is not None and route.context.enabled

    # -- the request path -----------------------------------------------------------------

    async def before(self, call: Call) -> Json | None:
        context = call.route.context
        if call.op != "chat" or not call.session_id or context is None:
            return None
        key = SessionKey(call.caller.tenant, call.route.id, call.session_id)
        system = call.route.prompt.system if call.route.prompt is not None else None
        request = split_request(list(call.body.get("messages") or ()), system)
        try:
            history = await self.store.load(key, history_budget(request, context.max_tokens))
        except REDIS_ERRORS as err:
            log.warning("context: loading session of request %s failed: %s", call.request_id, err)
            raise _unavailable(err) from None
        prompt = build_prompt(request, history, context.max_tokens)
        call.body = {**call.body, "messages": prompt.messages}
        call.estimated_prompt_tokens = prompt.tokens
        call.state[self.name] = _Turn(key, prompt)
        return None

    async def after(self, call: Call, outcome: Outcome) -> None:
        turn = call.state.get(self.name)
        context = call.route.context
        if not isinstance(turn, _Turn) or context is None:
            return
        if not outcome.completed or outcome.error is not None:
            return  # nothing of an unfinished turn is kept (see the module docstring)
        entries = [
            Entry(message, tokens)
            for message, tokens in zip(turn.prompt.new, turn.prompt.new_tokens, strict=True)
        ]
        answer = assistant_message(outcome.text, outcome.response, outcome.finish_reason)
        if answer is not None:
            usage = outcome.usage
            if usage is not None and usage.source == "provider" and usage.completion_tokens:
                tokens = usage.completion_tokens + FRAMING
            else:
                tokens = message_tokens(answer)
            entries.append(Entry(answer, tokens))
        if not entries:
            return
        settings = self.stores.settings
        try:
            appended = await self.store.append(
                turn.key,
                entries,
                ttl=_seconds(context.ttl),
                max_messages=settings.context_max_turns,
                max_bytes=settings.context_max_bytes,
            )
        except REDIS_ERRORS as err:
            log.error(
                "context: storing the turn of request %s in session %s failed: %s",
                call.request_id,
                turn.key.session,
                err,
            )
            return
        if appended.dropped:
            log.debug("context: session %s dropped %d oldest messages", turn.key, appended.dropped)
        if (
            context.strategy == "summarize"
            and context.summarizer is not None
            and needs_fold(appended.tokens, appended.summary_tokens, context.max_tokens)
        ):
            self._schedule_fold(turn.key, call.route)

    # -- summarize --------------------------------------------------------------------------

    def _schedule_fold(self, key: SessionKey, route: RouteConfig) -> None:
        if key in self._folds:
            return  # one fold per session at a time; the next turn re-checks
        loop = asyncio.get_running_loop()
        if self._fold_paused_until.get(route.id, 0.0) > loop.time():
            return
        task = loop.create_task(self._fold(key, route), name=f"context-fold {key.session}")
        self._folds[key] = task
        task.add_done_callback(lambda _: self._folds.pop(key, None))

    async def _fold(self, key: SessionKey, route: RouteConfig) -> None:
        context = route.context
        if context is None or context.summarizer is None:
            return
        try:
            history = await self.store.load_all(key)
            plan = plan_fold(history, context.max_tokens // 2)
            if plan is None:
                return
            summary, tokens = await self._summarize(route, history, plan.messages)
            removed = await self.store.fold(
                key,
                epoch=history.epoch,
                summary_version=history.summary_version,
                through_seq=plan.through_seq,
                summary=summary,
                summary_tokens=tokens + SUMMARY_OVERHEAD,
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            loop = asyncio.get_running_loop()
            self._fold_paused_until[route.id] = loop.time() + FOLD_RETRY_SECONDS
            log.warning("context: summarizing session %s on %s failed: %s", key, route.id, err)
            return
        if removed is None:
            log.info("context: session %s changed while summarizing; fold dropped", key)
        else:
            log.debug("context: folded %d messages of session %s", removed, key)

    async def _summarize(
        self, route: RouteConfig, history: History, messages: list[Any]
    ) -> tuple[str, int]:
        context = route.context
        assert context is not None and context.summarizer is not None and self.gateway is not None
        ref = context.summarizer.backend_ref
        backend_id = f"{ref.namespace or route.namespace}/{ref.name}"
        state = self.gateway.runtime.backends.get(backend_id)
        if state is None:
            raise RuntimeError(f"summarizer backend {backend_id} is not in the snapshot")
        words = max(32, context.max_tokens // 4)
        body = summarizer_body(context.summarizer.model, history.summary, messages, words)
        timeout = min(route.timeout, SUMMARIZER_TIMEOUT)
        slots = state.slots
        if slots is not None:
            await asyncio.wait_for(slots.acquire(), timeout)
        try:
            response = await asyncio.wait_for(
                state.adapter.chat(state.upstream, body, CallOptions(timeout=timeout)), timeout
            )
        finally:
            if slots is not None:
                slots.release()
        choices = response.get("choices") or []
        message = choices[0].get("message") if choices else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise RuntimeError(f"summarizer {backend_id} returned no text")
        usage = response.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return text.strip(), int(tokens) if tokens else estimate_text(text)

    async def settled(self) -> None:
        """Wait for the folds in flight (tests, orderly shutdown)."""
        while self._folds:
            await asyncio.gather(*list(self._folds.values()), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._folds.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._folds.clear()

    # -- the sessions API -----------------------------------------------------------------

    def _not_found(self, session_id: str) -> GatewayError:
        return GatewayError(
            404, f"no session {session_id} for this caller", code="session_not_found"
        )

    async def read_session(self, caller: Caller, session_id: str) -> dict[str, Any]:
        """GET /v1/sessions/{id}: the caller's (tenant's) session on every route."""
        try:
            found = await self.store.sessions(caller.tenant, session_id)
        except REDIS_ERRORS as err:
            raise _unavailable(err) from None
        if not found:
            raise self._not_found(session_id)
        routes_now = self.gateway.runtime.snapshot.routes if self.gateway is not None else {}
        routes: dict[str, Any] = {}
        for route_id, history in found.items():
            route = routes_now.get(route_id)
            name = route.model if route is not None else route_id
            if name in routes:  # a model name now served by another route: keep both apart
                name = route_id
            routes[name] = {
                "route": route_id,
                "summary": history.summary,
                "messages": [s.message for s in history.messages],
                "tokens": history.tokens + history.summary_tokens,
                "expiresIn": round(history.expires_in or 0.0, 3),
            }
        return {"id": session_id, "object": "session", "routes": routes}

    async def delete_session(self, caller: Caller, session_id: str) -> int:
        """DELETE /v1/sessions/{id}: erase it on every route of the caller's tenant."""
        try:
            erased = await self.store.delete(caller.tenant, session_id)
        except REDIS_ERRORS as err:
            raise _unavailable(err) from None
        if not erased:
            raise self._not_found(session_id)
        return erased
