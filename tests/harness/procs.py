"""Child processes of the bench: spawned with output to a log file, killed with their parent
(PR_SET_PDEATHSIG on Linux, so a SIGKILLed pytest leaves no orphans), stopped politely."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A bench component did not come up; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open until all are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
# util-linux's setpriv sets PR_SET_PDEATHSIG and then execs the command (same pid). Preferred
# to a preexec_fn: that forces a plain fork() running Python in the child before exec, and
# with gRPC threads alive in pytest (snapshot servers, gateways) the child sometimes hung
# there for good (its only output a gRPC "epoll_wait error: Bad file descriptor" line).
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs it when the thread that
    # spawned it ends, so children never outlive a killed pytest.
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn_args(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command line and preexec_fn that make the child die with its parent."""
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent


class Proc:
    """A running child whose stdout and stderr go to `log`."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        command, preexec = _spawn_args(self.argv)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                preexec_fn=preexec,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> StartupError:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return StartupError(
            f"{self.name} {what} ({state}); last lines of {self.log}:\n{self.tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)


def wait_until(
    check: Callable[[], bool], proc: Proc, what: str, timeout: float, interval: float = 0.1
) -> float:
    """Poll `check` until it is true; fail early if `proc` dies. Returns seconds waited.
    Exceptions from `check` count as "not yet"."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        if not proc.alive():
            raise proc.failure(f"died before {what}")
        if time.monotonic() > deadline:
            raise proc.failure(f"not {what} after {timeout:.0f}s")
        time.sleep(interval)
