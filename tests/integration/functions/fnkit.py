"""Helpers of the function tests: functions as plain processes (``python -m
kanal_functions.*`` or the console scripts) in front of a real gateway on 127.0.0.1, which
they call over gRPC."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.procs import Proc

API_KEY = "sk-kanal-functions-test-0123456789"

HAIKU_PROMPT = {
    "system": "You write one haiku, nothing else.",
    "template": "Write a haiku about {{topic}}, in a {{ mood }} mood.",
    "variables": [
        {"name": "topic", "description": "What the haiku is about"},
        {"name": "mood", "default": "calm"},
    ],
    "expose": {"function": True},
}

GATEWAY_YAML = f"""
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: mock}}
spec:
  provider: mock
  models:
    - {{name: mock-small, contextWindow: 8192}}
    - {{name: error-503, contextWindow: 8192}}
    - {{name: error-429, contextWindow: 8192}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: haiku}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  prompt: {json.dumps(HAIKU_PROMPT)}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: broken}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: error-503}}]
  retry: {{attempts: 0}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: limited}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: error-429}}]
  retry: {{attempts: 0}}
"""

KEY_SECRET_YAML = f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: caller, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: {API_KEY}}}
"""


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[str]:
        """The data of each Server-Sent Event."""
        text = self.body.decode()
        assert text.endswith("\n\n"), text
        return [block.removeprefix("data: ") for block in text[:-2].split("\n\n")]


def post(url: str, body: bytes | str | Any, headers: Mapping[str, str] | None = None) -> Reply:
    if not isinstance(body, bytes):
        body = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


@dataclass
class FunctionProcess:
    proc: Proc
    url: str

    def post(self, body: Any, headers: Mapping[str, str] | None = None, path: str = "/") -> Reply:
        return post(self.url + path, body, headers)


Starter = Callable[..., FunctionProcess]
"""The ``functions`` fixture: ``functions(module, env, script=None)`` starts one."""


def start_function(
    module: str, env: Mapping[str, str], log: Path, *, script: str | None = None
) -> FunctionProcess:
    """Starts the function as its own process on a free port; waits until it listens."""
    command = (
        [str(Path(sys.executable).parent / script)] if script else [sys.executable, "-m", module]
    )
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOST": "127.0.0.1",
        "PORT": "0",
        **env,
    }
    proc = Proc(module, command, log, env=full_env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on http://" in text:
            address = text.split("listening on http://", 1)[1].split()[0]
            return FunctionProcess(proc, f"http://{address}")
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.popen.kill()
    raise AssertionError(f"{module} did not start; log:\n{log.read_text()}")


def stop_function(function: FunctionProcess) -> None:
    function.proc.stop()
