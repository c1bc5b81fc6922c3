"""`kanal up` as a user runs it: a real process on real ports, edited files, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from harness.procs import free_ports

ROOT = Path(__file__).parents[2]


def model_ids(base_url: str) -> list[str]:
    with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
        return [m["id"] for m in json.load(response)["data"]]


class UpProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; log:\n{self.log.read_text()}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[UpProcess, Path]]:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "mock.yaml").write_text((ROOT / "examples/quickstart/mock.yaml").read_text())
    port, grpc_port = free_ports(2)
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kanal",
                "up",
                "-f",
                str(folder),
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = UpProcess(proc, port, log)
    try:
        running.wait_for("kanal up: HTTP on")
        yield running, folder
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serves_quickstart_and_says_how_callers_are_admitted(up: tuple[UpProcess, Path]) -> None:
    running, _ = up
    assert "every caller is admitted as tenant 'default'" in running.log.read_text()
    client = openai.OpenAI(base_url=running.base_url, api_key="any", max_retries=0)
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "ping"}]
    )
    assert reply.choices[0].message.content == "Mock reply from mock-small: ping"


def test_edits_are_applied_and_bad_edits_keep_the_last_good_snapshot(
    up: tuple[UpProcess, Path],
) -> None:
    running, folder = up
    manifest = folder / "mock.yaml"
    manifest.write_text(manifest.read_text().replace("name: chat", "name: chat2"))
    running.wait_for("applied snapshot")
    assert model_ids(running.base_url) == ["chat2"]

    manifest.write_text(manifest.read_text().replace("contextWindow: 8192", "contextWindow: -1"))
    running.wait_for("keeping snapshot")
    assert "spec.models[0].contextWindow" in running.log.read_text()
    assert model_ids(running.base_url) == ["chat2"]


def test_sigint_stops_cleanly(up: tuple[UpProcess, Path]) -> None:
    running, _ = up
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(15) == 0
    with pytest.raises(urllib.error.URLError):
        model_ids(running.base_url)


def test_invalid_files_exit_1_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples/quickstart/mock.yaml")
        .read_text()
        .replace("provider: mock", "provider: x")
    )
    result = subprocess.run(
        [sys.executable, "-m", "kanal", "up", "-f", str(bad), "--port", str(free_ports(1)[0])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "spec.provider" in result.stderr


def test_secret_from_environment(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kanal",
            "up",
            "-f",
            str(ROOT / "examples/quickstart"),
            "--secret",
            "openai-key:apiKey=KANAL_TEST_UNSET_VARIABLE",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "KANAL_TEST_UNSET_VARIABLE is not set" in result.stderr


def test_api_key_rotation_by_editing_the_secret(up: tuple[UpProcess, Path]) -> None:
    running, folder = up
    secret = folder / "key.yaml"
    secret.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: caller\n"
        "  labels: {kanal.dev/api-key: 'true'}\nstringData: {key: sk-first}\n"
    )
    running.wait_for("applied snapshot")
    first = openai.OpenAI(base_url=running.base_url, api_key="sk-first", max_retries=0)
    assert [m.id for m in first.models.list()] == ["chat"]
    with pytest.raises(openai.AuthenticationError):  # keys exist now: no more anonymous
        openai.OpenAI(base_url=running.base_url, api_key="sk-other", max_retries=0).models.list()

    before = running.log.read_text().count("applied snapshot")
    secret.write_text(secret.read_text().replace("sk-first", "sk-second"))
    deadline = time.monotonic() + 15
    while running.log.read_text().count("applied snapshot") == before:
        assert time.monotonic() < deadline, running.log.read_text()
        time.sleep(0.05)
    with pytest.raises(openai.AuthenticationError):
        first.models.list()
    second = openai.OpenAI(base_url=running.base_url, api_key="sk-second", max_retries=0)
    assert [m.id for m in second.models.list()] == ["chat"]
    assert "sk-first" not in running.log.read_text() and "sk-second" not in running.log.read_text()
