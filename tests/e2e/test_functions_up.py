"""`kanal up` serves prompt functions in-process at POST /functions/{namespace}/{route}: a
real process, the quickstart's files, edits applied while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.procs import free_ports

ROOT = Path(__file__).parents[2]
SEA = "Mock reply from mock-small: Write a haiku about the sea, in a calm mood."


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    folder: Path

    def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers=headers or {},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def wait_for_count(self, text: str, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text().count(text) < count:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    for name in ("mock.yaml", "haiku.yaml"):  # the README's quickstart files
        (folder / name).write_text((ROOT / "examples/quickstart" / name).read_text())
    port, grpc_port = free_ports(2)
    command = [sys.executable, "-m", "kanal", "up", "-f", str(folder), "--port", str(port)]
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--grpc-port", str(grpc_port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Up(proc, port, log, folder)
    try:
        running.wait_for_count("kanal up: HTTP on", 1)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serves_the_quickstart_prompt_function_and_follows_edits(up: Up) -> None:
    assert f"prompt function: POST http://127.0.0.1:{up.port}/functions/default/haiku" in (
        up.log.read_text()
    )
    status, headers, body = up.post("/functions/default/haiku", {"topic": "the sea"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["output"] == SEA and answer["route"] == "default/haiku"
    assert headers["x-kanal-backend"] == "default/mock"

    status, _, body = up.post("/functions/default/haiku", {"mood": "dark"})
    assert status == 400 and json.loads(body)["error"]["param"] == "topic"

    status, headers, body = up.post("/functions/default/haiku?stream=true", {"topic": "the sea"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = body.decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    texts = [json.loads(e.removeprefix("data: ")).get("output", "") for e in events[:-1]]
    assert "".join(texts) == SEA

    # an edit of the template is served at once, without a restart
    manifest = up.folder / "haiku.yaml"
    manifest.write_text(manifest.read_text().replace("Write a haiku about", "Sing of"))
    up.wait_for_count("applied snapshot", 1)
    status, _, body = up.post("/functions/default/haiku", {"topic": "the sea"})
    assert (
        json.loads(body)["output"] == "Mock reply from mock-small: Sing of the sea, in a calm mood."
    )

    # unpublished: the function is gone (the route itself still serves chat)
    manifest.write_text(manifest.read_text().replace("expose: {function: true}", ""))
    up.wait_for_count("applied snapshot", 2)
    status, _, body = up.post("/functions/default/haiku", {"topic": "the sea"})
    assert status == 404 and json.loads(body)["error"]["code"] == "function_not_found"
    status, _, body = up.post(
        "/v1/chat/completions", {"model": "haiku", "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200


def test_the_callers_key_is_what_the_gateway_checks(up: Up) -> None:
    (up.folder / "key.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: caller\n"
        "  labels: {kanal.dev/api-key: 'true'}\nstringData: {key: sk-fn-e2e}\n"
    )
    up.wait_for_count("applied snapshot", 1)
    status, _, body = up.post("/functions/default/haiku", {"topic": "the sea"})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = up.post(
        "/functions/default/haiku", {"topic": "the sea"}, {"Authorization": "Bearer sk-fn-e2e"}
    )
    assert status == 200 and json.loads(body)["output"] == SEA


def test_unknown_functions_are_404(up: Up) -> None:
    for path in ("/functions/default/chat", "/functions/other/haiku"):
        status, _, body = up.post(path, {})
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "function_not_found"
