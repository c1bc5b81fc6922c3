"""`kanal gateway` processes fed by the operator's snapshot server, with the persisted Secret on
the real API server as the fallback: follow edits, NACK bad updates, survive the operator.

The gateway reads the Secret as a ServiceAccount allowed exactly `get` on `secrets/kanal-snapshot`
in the test namespace (as the chart grants it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distkit import (
    GatewayProcess,
    ServerThread,
    eventually,
    gateways,
    persisted_secret,
    snapshot_with_routes,
)

from kanal.controller.distribution import GatewayStatus
from kanal.snapshot import SNAPSHOT_SECRET, Snapshot

A = snapshot_with_routes("chat")
B = snapshot_with_routes("chat", "chat2")
C = snapshot_with_routes("chat", "chat3")


def schema_from_the_future(base: Snapshot) -> Snapshot:
    """Valid here, but of a schema a gateway of this version cannot read."""
    return Snapshot(schema_version=2, backends=base.backends, routes=base.routes)


def unknown_provider(base: Snapshot) -> Snapshot:
    backends = {k: b.model_copy(update={"provider": "nonesuch"}) for k, b in base.backends.items()}
    return Snapshot(backends=backends, routes=base.routes)


@pytest.fixture
def reader_token(kube: Any, tmp_path: Path) -> Path:
    """A token of a ServiceAccount that may only `get` the snapshot Secret."""
    kube.kubectl("create", "serviceaccount", "kanal-gateway")
    kube.kubectl(
        "create",
        "role",
        "kanal-snapshot-reader",
        "--verb=get",
        "--resource=secrets",
        f"--resource-name={SNAPSHOT_SECRET}",
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "kanal-snapshot-reader",
        "--role=kanal-snapshot-reader",
        f"--serviceaccount={kube.namespace}:kanal-gateway",
    )
    token = tmp_path / "token"
    token.write_text(kube.kubectl("create", "token", "kanal-gateway", "--duration=10m").stdout)
    return token


def kube_args(kube: Any, token: Path) -> list[str]:
    return [
        "--kube-api-url",
        kube.control_plane.server,
        "--kube-ca-file",
        str(kube.control_plane.ca_path),
        "--kube-token-file",
        str(token),
        "--snapshot-namespace",
        kube.namespace,
    ]


def persist(kube: Any, snapshot: Snapshot) -> None:
    kube.core.create_namespaced_secret(kube.namespace, persisted_secret(snapshot))


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(token="s3cret") as running:
        yield running


def test_gateway_follows_the_operator_and_keeps_the_last_good_snapshot(
    server: ServerThread, tmp_path: Path
) -> None:
    token_file = tmp_path / "operator-token"
    token_file.write_text("s3cret\n")
    gw = GatewayProcess(
        tmp_path, "gw-1", server.target, extra=["--operator-token-file", str(token_file)]
    )
    strict = GatewayProcess(tmp_path, "gw-strict", server.target, anonymous=False)

    def gw1() -> GatewayStatus:
        return next(g for g in server.server.gateways() if g.gateway_id == "gw-1")

    with gateways(gw, strict):
        gw.wait_logged("subscribed to")
        assert gw.readyz()[0] == 503  # nothing published, no fallback configured
        time.sleep(1.2)  # past --fallback-after: still nothing to serve
        assert gw.readyz() == (503, "no routing snapshot loaded yet")

        server.publish(A)
        gw.wait_version(A.version)
        status, body = gw.chat("chat")
        assert status == 200, body
        eventually(lambda: server.acks().get("gw-1") == A.version, "gw-1 acks A")

        server.publish(B)  # an edit: a route added
        gw.wait_for(lambda: "chat2" in gw.models(), "serves chat2", timeout=5.0)
        eventually(lambda: server.acks()["gw-1"] == B.version, "gw-1 acks B")

        for bad, reason in (
            (schema_from_the_future(A), "snapshot schema is not 1"),
            (unknown_provider(A), "does not know provider(s) nonesuch"),
        ):
            server.publish(bad)
            eventually(lambda: gw1().nacked_version == server.server.latest_version, "a NACK")
            status_gw1 = gw1()
            assert status_gw1.nacked_version == bad.version
            assert reason in status_gw1.nack_error
            assert status_gw1.version == B.version
            assert gw.version() == B.version  # still serving the last good one
            assert gw.models() == ["chat", "chat2"]
            assert gw.chat("chat2")[0] == 200
        assert "refused snapshot" in gw.log()

        server.publish(C)  # the next good one is applied again
        gw.wait_version(C.version)
        assert gw.models() == ["chat", "chat3"]
        eventually(lambda: server.acks()["gw-1"] == C.version, "gw-1 acks C")

        # no token: the operator refuses it, and it serves nothing
        strict.wait_logged("UNAUTHENTICATED: missing or wrong token (check the shared token)")
        assert strict.readyz()[0] == 503
        assert "gw-strict" not in server.acks()

        assert gw.stop() == 0  # SIGTERM: a clean exit
        assert "kanal gateway gw-1: stopped" in gw.log()
        eventually(lambda: "gw-1" not in server.acks(), "gw-1 forgotten once gone")


def test_callers_without_credentials_are_refused_unless_allowed(
    server: ServerThread, tmp_path: Path
) -> None:
    env = {"KANAL_SNAPSHOT_TOKEN": "s3cret"}
    strict = GatewayProcess(tmp_path, "strict", server.target, anonymous=False, env=env)
    open_ = GatewayProcess(tmp_path, "open", server.target, env=env)
    with gateways(strict, open_):
        server.publish(A)
        strict.wait_version(A.version)
        open_.wait_version(A.version)
        status, body = strict.chat("chat")
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        assert open_.chat("chat")[0] == 200


def test_operator_down_gateways_keep_serving_and_new_ones_start_from_the_secret(
    kube: Any, reader_token: Path, tmp_path: Path
) -> None:
    env = {"KANAL_SNAPSHOT_TOKEN": "s3cret"}
    server = ServerThread(token="s3cret")
    port = server.port
    persist(kube, A)  # the operator persists, then publishes
    server.publish(A)
    first = GatewayProcess(
        tmp_path, "gw-first", server.target, kube_args=kube_args(kube, reader_token), env=env
    )
    with gateways(first):
        first.wait_version(A.version)
        first.wait_logged("from the operator")

        server.stop()  # the operator dies
        first.wait_logged("lost: UNAVAILABLE")
        for _ in range(10):  # ... and the gateway keeps serving while it retries
            assert first.chat("chat")[0] == 200
            assert first.version() == A.version
            time.sleep(0.2)

        second = GatewayProcess(
            tmp_path,
            "gw-second",
            f"127.0.0.1:{port}",
            kube_args=kube_args(kube, reader_token),
            env=env,
        )
        with gateways(second):
            took = second.wait_version(A.version)
            assert took < 10
            assert "serving persisted snapshot" in second.log()
            status, body = second.chat("chat")
            assert status == 200, body

            with ServerThread(token="s3cret", port=port) as again:  # the operator is back
                again.publish(B)
                for gw in (first, second):
                    gw.wait_version(B.version, timeout=15)
                    assert gw.models() == ["chat", "chat2"]
                eventually(
                    lambda: again.acks() == {"gw-first": B.version, "gw-second": B.version},
                    "both gateways resubscribed and acked B",
                )


def test_without_any_snapshot_a_gateway_is_unready_until_the_secret_appears(
    kube: Any, reader_token: Path, tmp_path: Path
) -> None:
    """The operator is up but has nothing yet, and nothing is persisted: /readyz stays 503
    while the gateway keeps retrying; the persisted snapshot is then used; the operator's
    first snapshot replaces it. A Secret the gateway may not read is reported as such."""
    with ServerThread() as server:
        gw = GatewayProcess(
            tmp_path, "gw-waiting", server.target, kube_args=kube_args(kube, reader_token)
        )
        forbidden = GatewayProcess(
            tmp_path,
            "gw-forbidden",
            server.target,
            kube_args=[*kube_args(kube, reader_token), "--snapshot-secret", "someone-elses"],
        )
        with gateways(gw, forbidden):
            gw.wait_logged("does not exist (yet)")
            assert "no snapshot yet from the operator" in gw.log()  # reachable, but empty
            assert gw.readyz()[0] == 503
            forbidden.wait_logged("refused to read Secret")
            assert "HTTP 403" in forbidden.log()
            assert forbidden.readyz()[0] == 503

            persist(kube, A)
            gw.wait_version(A.version, timeout=10)
            assert "serving persisted snapshot" in gw.log()
            eventually(lambda: server.acks().get("gw-waiting") == A.version, "ack of A")

            server.publish(B)
            gw.wait_version(B.version)
            forbidden.wait_version(B.version)  # the stream needs no Secret
