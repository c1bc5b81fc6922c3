"""A throwaway redis-server (Debian's) on a free 127.0.0.1 port."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from harness.procs import Proc, free_ports, wait_until


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when the server answers PING with +PONG (raw RESP, no client library)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """Context manager: starts redis-server without persistence, stops it on exit."""

    host = "127.0.0.1"

    def __init__(self, binary: Path, startup_timeout: float = 20.0) -> None:
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self.dir = Path()
        self.proc: Proc | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kanal-redis-"))
        (self.port,) = free_ports(1)
        argv = [
            str(self.binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        self.proc = Proc("redis-server", argv, self.dir / "redis.log")
        self.startup_seconds = wait_until(
            lambda: ping(self.host, self.port), self.proc, "answering PING", self.startup_timeout
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        if self.dir != Path():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
