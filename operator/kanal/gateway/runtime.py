"""Live state of the data plane: the snapshot in force and one runtime per backend.

Applying a snapshot swaps everything in one assignment; backends whose configuration did
not change keep their connection pool, cooldown and concurrency state.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from kanal.gateway.providers import ADAPTERS
from kanal.gateway.providers.base import FailureKind, ProviderAdapter, Upstream, UpstreamError
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import BackendConfig, Snapshot

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("kanal.gateway")

# failures that count toward a cooldown: the backend, not the request, is at fault
_BACKEND_FAULTS = frozenset(
    {
        FailureKind.SERVER,
        FailureKind.TIMEOUT,
        FailureKind.CONNECT,
        FailureKind.PROTOCOL,
        FailureKind.AUTH,
    }
)


@dataclass(slots=True)
class BackendState:
    config: BackendConfig
    adapter: ProviderAdapter
    upstream: Upstream
    slots: asyncio.Semaphore | None
    failures: int = 0
    cooldown_until: float = 0.0
    in_flight: int = field(default=0)
    cooldowns: int = 0
    """Times this backend went into cooldown (a counter for /metrics)."""

    def record_success(self) -> None:
        self.failures = 0

    def record_failure(self, err: UpstreamError, now: float, settings: GatewaySettings) -> None:
        if err.kind is FailureKind.RATE_LIMITED:
            pause = err.retry_after if err.retry_after is not None else settings.cooldown_seconds
            self.cooldowns += self.cooldown_until <= now
            self.cooldown_until = max(self.cooldown_until, now + pause)
        elif err.kind in _BACKEND_FAULTS:
            self.failures += 1
            if self.failures >= settings.cooldown_after_failures:
                self.failures = 0
                self.cooldowns += self.cooldown_until <= now
                self.cooldown_until = max(self.cooldown_until, now + settings.cooldown_seconds)
                log.warning(
                    "backend %s cooling down for %.1fs after repeated failures",
                    self.config.id,
                    settings.cooldown_seconds,
                )


class Runtime:
    """The snapshot in force plus backend state; one per gateway process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.snapshot = Snapshot()
        self.backends: dict[str, BackendState] = {}
        self._retired: list[aiohttp.ClientSession] = []
        self._closing: set[asyncio.Future[None]] = set()
        self.ready = False
        """True once a snapshot has been applied."""
        self.tracer: Tracer | None = None
        """Set by the tracing sink when tracing is on: the router and the policy chain make
        spans with it, and upstream requests carry ``traceparent``. Set it before the first
        snapshot is applied (each backend's Upstream is told so when it is made)."""

    async def apply(self, snapshot: Snapshot) -> None:
        """Start serving ``snapshot``. Never fails half-way: state is built first, then swapped."""
        states: dict[str, BackendState] = {}
        for backend_id, config in snapshot.backends.items():
            current = self.backends.get(backend_id)
            if current is not None and current.config == config:
                states[backend_id] = current
                continue
            states[backend_id] = self._new_state(config)
        retired = [
            state.upstream.session
            for backend_id, state in self.backends.items()
            if states.get(backend_id) is not state
        ]
        self.backends, self.snapshot = states, snapshot
        self.ready = True
        # requests in flight may still use a retired pool; close it once they are done
        self._retired.extend(retired)
        asyncio.get_running_loop().call_later(
            max(60.0, self.settings.stream_idle_timeout), self._close_retired_soon, retired
        )

    def _close_retired_soon(self, sessions: list[aiohttp.ClientSession]) -> None:
        for session in sessions:
            if session in self._retired:
                self._retired.remove(session)
                task = asyncio.ensure_future(session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _new_state(self, config: BackendConfig) -> BackendState:
        connector = aiohttp.TCPConnector(
            limit=config.max_concurrency or self.settings.max_connections_per_backend,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        upstream = Upstream(
            backend_id=config.id,
            base_url=config.base_url or "mock://",
            session=session,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            api_version=config.api_version,
            connect_timeout=config.connect_timeout,
            propagate_trace=self.tracer is not None,
        )
        slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        return BackendState(config, ADAPTERS[config.provider], upstream, slots)

    async def close(self) -> None:
        sessions = [s.upstream.session for s in self.backends.values()] + self._retired
        self.backends = {}
        self._retired = []
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
