"""Where compiled snapshots go after the operator persisted them: the distribution side.

``kanal.controller.distribution.GrpcSnapshotServer`` implements :class:`SnapshotPublisher`
(gateways subscribe over gRPC and ACK the version they run). Without it the operator still
compiles and persists (gateways then read the Secret), using :class:`InMemoryPublisher`.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from kanal.snapshot import Snapshot


@runtime_checkable
class SnapshotPublisher(Protocol):
    """Receives every new snapshot version; reports what the gateways run."""

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the current one for every subscriber. Must not block for long:
        it is called from the operator's event loop."""

    def acks(self) -> dict[str, str]:
        """Gateway id -> snapshot version it last acknowledged."""


class InMemoryPublisher:
    """Keeps the latest snapshot; no subscribers. The default, and a test double."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._published: list[str] = []
        self._acks: dict[str, str] = {}

    def publish(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._current = snapshot
            self._published.append(snapshot.version)

    def acks(self) -> dict[str, str]:
        with self._lock:
            return dict(self._acks)

    # -- for tests and in-process use ---------------------------------------------------------

    @property
    def current(self) -> Snapshot | None:
        with self._lock:
            return self._current

    @property
    def versions(self) -> list[str]:
        """Every version published, in order."""
        with self._lock:
            return list(self._published)

    def ack(self, gateway: str, version: str) -> None:
        with self._lock:
            self._acks[gateway] = version
