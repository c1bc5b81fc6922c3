"""Upstream time is measured finely enough for x-kanal-overhead-ms, also under uvloop (which
`kanal up` and `kanal gateway` run), whose loop.time() only has millisecond resolution."""

from __future__ import annotations

import time

import pytest
import uvloop

from gwkit import TEST_SETTINGS, snapshot_from_yaml
from kanal.gateway.router import Router, Trace
from kanal.gateway.runtime import BackendState, Runtime
from kanal.snapshot import Target

pytestmark = pytest.mark.unit

OBJECTS = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
"""


def test_sub_millisecond_upstream_time_is_not_rounded_to_the_millisecond() -> None:
    async def main() -> float:
        runtime = Runtime(TEST_SETTINGS)
        snapshot = snapshot_from_yaml(OBJECTS)
        await runtime.apply(snapshot)
        try:

            async def attempt(state: BackendState, target: Target, timeout: float) -> str:
                until = time.perf_counter() + 0.0003  # a fast upstream: 0.3 ms, no await
                while time.perf_counter() < until:
                    pass
                return "ok"

            trace = Trace()
            assert await Router(runtime).run(snapshot.routes["default/chat"], attempt, trace)
            return trace.upstream_seconds
        finally:
            await runtime.close()

    upstream = uvloop.run(main())
    assert upstream >= 0.0003
    # a millisecond clock gives 0.0 or a whole number of milliseconds here
    assert abs(upstream * 1000 - round(upstream * 1000)) > 1e-6, upstream
