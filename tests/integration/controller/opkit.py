"""Helpers for the operator tests. The operator runs as a user runs it: `python -m kanal
operator` as a real process, against the real kube-apiserver + etcd + kube-controller-manager of
the test bench, one namespace per test.

Knative's controller does not run: tests play it by patching a Knative Service's /status."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s

from harness import Kube
from kanal.snapshot import SNAPSHOT_KEY, SNAPSHOT_SECRET, VERSION_ANNOTATION, Snapshot, from_bytes

REPO = Path(__file__).resolve().parents[3]
PEERING_CRD = REPO / "operator" / "kanal" / "controller" / "peering-crd.yaml"
KNATIVE = ("serving.knative.dev", "v1")
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1
) -> T:
    """Poll until ``probe`` returns something truthy; fail naming ``what`` (and the last
    value seen) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except k8s.ApiException as err:
            last = err
            if err.status != 404:
                raise
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@dataclass
class Operator:
    """One `kanal operator` process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_at: float = 0.0

    def start(self) -> Operator:
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 20.0, after: int = 0) -> None:
        """Wait until ``text`` appears in the log (past character ``after``)."""

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"operator {self.name} exited {self.proc.returncode}:\n{self.log()}")
            return text in self.log()[after:]

        wait_for(f"{text!r} in the log of operator {self.name}", seen, timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"operator {self.name} ignored SIGTERM for {timeout}s:\n{self.log()}")
        self.exit_code = self.proc.returncode
        return self.exit_code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Operators:
    """Starts `kanal operator` processes for one test and stops them all afterwards."""

    kube: Kube
    tmp_path: Path
    running: list[Operator] = field(default_factory=list)

    def start(self, *extra: str, name: str | None = None, wait: bool = True) -> Operator:
        name = name or f"op{len(self.running) + 1}"
        ns = self.kube.namespace
        argv = [
            sys.executable,
            "-m",
            "kanal",
            "operator",
            "--namespace",
            ns,
            "--snapshot-namespace",
            ns,
            "--prompt-function-image",
            "example.test/kanal-prompt:test",
            "--gateway-grpc",
            "kanal-gateway.kanal-system.svc.cluster.local:9090",
            *extra,
        ]
        if "--peering" not in extra:
            argv.append("--standalone")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kube.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "POD_ID": f"{name}-{ns}",  # kopf's peering identity
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        op = Operator(name, argv, env, self.tmp_path / f"{name}.log").start()
        self.running.append(op)
        if wait:
            # kopf's startup handlers ran: the watches are being set up
            op.wait_log("Activity 'start-sync' succeeded", timeout=30)
        return op

    def stop_all(self) -> None:
        for op in self.running:
            op.kill()


# -- reading the cluster ---------------------------------------------------------------------


def ksvc(kube: Kube, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            *KNATIVE, kube.namespace, "services", name
        )
    except k8s.ApiException as err:
        if err.status == 404:
            return None
        raise
    return obj


def ksvcs(kube: Kube) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.custom.list_namespaced_custom_object(
        *KNATIVE, kube.namespace, "services"
    )["items"]
    return items


def kanal_obj(kube: Kube, plural: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube.custom.get_namespaced_custom_object(
        "kanal.dev", "v1alpha1", kube.namespace, plural, name
    )
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def cond_status(kube: Kube, plural: str, name: str, type_: str = "Ready") -> str | None:
    found = condition(kanal_obj(kube, plural, name), type_)
    return found.get("status") if found else None


def play_knative(
    kube: Kube,
    name: str,
    *,
    ready: str = "True",
    observed: int | None = None,
    reason: str = "",
    message: str = "",
) -> None:
    """What Knative's controller would write: Ready, observedGeneration and the URL."""
    if observed is None:
        current = ksvc(kube, name)
        assert current is not None, f"no Knative Service {name}"
        observed = int(current["metadata"]["generation"])
    status = {
        "observedGeneration": observed,
        "url": f"http://{name}.{kube.namespace}.svc.cluster.local",
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": message},
            {"type": "ConfigurationsReady", "status": ready},
            {"type": "RoutesReady", "status": ready},
        ],
    }
    kube.kubectl(
        "patch",
        "ksvc",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def snapshot_secret(kube: Kube) -> tuple[str, Snapshot] | None:
    """(version annotation, decoded snapshot) of the persisted snapshot, if any."""
    try:
        secret = kube.core.read_namespaced_secret(SNAPSHOT_SECRET, kube.namespace)
    except k8s.ApiException as err:
        if err.status == 404:
            return None
        raise
    version = (secret.metadata.annotations or {}).get(VERSION_ANNOTATION, "")
    raw = base64.b64decode(secret.data[SNAPSHOT_KEY])
    if raw[:2] == b"\x1f\x8b":  # large snapshots are stored gzipped
        raw = gzip.decompress(raw)
    snapshot = from_bytes(raw)
    return version, snapshot


def create_openai_key(kube: Kube, value: str = "sk-test-1") -> None:
    kube.kubectl("create", "secret", "generic", "openai-key", f"--from-literal=apiKey={value}")
