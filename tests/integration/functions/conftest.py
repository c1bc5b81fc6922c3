"""Fixtures of the function tests: a real gateway on 127.0.0.1 (in a thread) and function
processes started per module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from fnkit import (
    GATEWAY_YAML,
    KEY_SECRET_YAML,
    FunctionProcess,
    Starter,
    start_function,
    stop_function,
)

from gwkit import ThreadedGateway, snapshot_from_yaml, threaded_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedGateway]:
    """A gateway that admits anonymous callers."""
    with threaded_gateway(snapshot_from_yaml(GATEWAY_YAML)) as gw:
        yield gw


@pytest.fixture(scope="module")
def keyed_gateway() -> Iterator[ThreadedGateway]:
    """A gateway with an API key Secret: callers must send the key."""
    with threaded_gateway(snapshot_from_yaml(GATEWAY_YAML + KEY_SECRET_YAML)) as gw:
        yield gw


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starter]:
    """Starts functions for the module's tests and stops them all at the end."""
    started: list[FunctionProcess] = []
    folder = tmp_path_factory.mktemp("functions")

    def start(module: str, env: Mapping[str, str], script: str | None = None) -> FunctionProcess:
        function = start_function(module, env, folder / f"fn-{len(started)}.log", script=script)
        started.append(function)
        return function

    yield start
    for function in started:
        stop_function(function)
