"""Pure pieces of `kanal gateway`'s snapshot subscription: backoff, update decoding (gzip
too), the persisted Secret's parsing, the command line's settings, the generated protocol."""

from __future__ import annotations

import argparse
import base64
import gzip
import logging
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gwkit import MOCK_YAML, snapshot_from_yaml
from kanal.cli import IN_CLUSTER_API, build_parser
from kanal.cli import _gateway_settings as gateway_settings
from kanal.controller.distribution import GZIP_ABOVE, encode
from kanal.gateway._subscriber_backoff import Backoff
from kanal.gateway._subscriber_codec import GZIP_MAGIC, inflate
from kanal.gateway._subscriber_kube import PersistedSnapshot, SnapshotUnavailable
from kanal.gateway.settings import GatewaySettings
from kanal.gateway.subscriber import SnapshotRefused, decode_update
from kanal.snapshot import SNAPSHOT_KEY, VERSION_ANNOTATION, Snapshot, to_bytes
from kanal.v1 import snapshot_pb2 as pb
from kanal.v1 import snapshot_pb2_grpc as pb_grpc

SNAPSHOT = snapshot_from_yaml(MOCK_YAML)
ROUTE = """
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: route-{i}}}
spec:
  backends: [{{backendRef: {{name: mock}}, model: mock-small}}]
  guardrails: {{redact: [email, phone, credit-card], maxInputTokens: 8000}}
"""


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(7))
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next() for _ in steps]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next() <= 0.5


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, attempt=10_000)
    assert 15.0 <= backoff.next() <= 30.0


# -- decoding an update ----------------------------------------------------------------------


def update(snapshot: Snapshot, version: str | None = None) -> pb.SnapshotUpdate:
    return pb.SnapshotUpdate(
        version=snapshot.version if version is None else version, payload=to_bytes(snapshot)
    )


def test_a_good_update_decodes_to_the_same_snapshot() -> None:
    assert decode_update(update(SNAPSHOT)) == SNAPSHOT


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (pb.SnapshotUpdate(version="abc", payload=b"{not json"), "snapshot is not JSON"),
        (pb.SnapshotUpdate(version="abc", payload=b"{}"), "snapshot schema is not 1"),
        (update(SNAPSHOT, version="0123456789abcdef"), "but its payload is"),
        (
            update(Snapshot(schema_version=2, routes=SNAPSHOT.routes)),
            "snapshot schema is not 1",
        ),
        (
            update(
                Snapshot(
                    backends={
                        k: b.model_copy(update={"provider": "nonesuch"})
                        for k, b in SNAPSHOT.backends.items()
                    }
                )
            ),
            "does not know provider(s) nonesuch",
        ),
    ],
)
def test_unusable_updates_are_refused_with_a_reason(
    message: pb.SnapshotUpdate, reason: str
) -> None:
    with pytest.raises(SnapshotRefused) as err:
        decode_update(message)
    assert reason in str(err.value)


def test_a_payload_whose_claimed_version_lies_is_refused() -> None:
    data = orjson.loads(to_bytes(SNAPSHOT))
    data["routes"]["default/chat"]["timeout"] = 1.0  # edited after hashing
    tampered = pb.SnapshotUpdate(version=SNAPSHOT.version, payload=orjson.dumps(data))
    with pytest.raises(SnapshotRefused, match="does not match its content"):
        decode_update(tampered)


def test_a_gzipped_payload_is_decoded_like_the_json() -> None:
    assert encode(SNAPSHOT) == to_bytes(SNAPSHOT)  # small: sent as it is
    big = snapshot_from_yaml(MOCK_YAML + "".join(ROUTE.format(i=i) for i in range(60)))
    payload = encode(big)
    assert payload.startswith(GZIP_MAGIC) and len(to_bytes(big)) >= GZIP_ABOVE
    assert decode_update(pb.SnapshotUpdate(version=big.version, payload=payload)) == big


# -- gzip ------------------------------------------------------------------------------------


def test_inflate_passes_json_through_and_gunzips_gzip() -> None:
    raw = to_bytes(SNAPSHOT)
    assert inflate(raw, 10) is raw  # not gzip: untouched, whatever its size
    assert inflate(gzip.compress(raw), len(raw)) == raw


@pytest.mark.parametrize(
    ("data", "limit", "reason"),
    [
        (gzip.compress(b"x" * 10_000), 9_999, "larger than 9999 bytes"),  # a bomb, in small
        (gzip.compress(b"{}")[:-6], 100, "truncated"),
        (GZIP_MAGIC + b"not really", 100, "not valid gzip"),
    ],
)
def test_inflate_refuses_bad_or_oversized_gzip(data: bytes, limit: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        inflate(data, limit)


# -- the persisted Secret --------------------------------------------------------------------


def secret_body(data: dict[str, str] | None, annotations: dict[str, str] | None = None) -> bytes:
    meta = {"name": "kanal-snapshot", "annotations": annotations or {}}
    return orjson.dumps({"kind": "Secret", "metadata": meta, "data": data})


@pytest.fixture
def persisted() -> PersistedSnapshot:
    settings = GatewaySettings(kube_api_url="https://kube.example:6443/")
    return PersistedSnapshot(settings, "kanal-system")


def test_the_secret_url_is_the_one_object(persisted: PersistedSnapshot) -> None:
    assert persisted.url == (
        "https://kube.example:6443/api/v1/namespaces/kanal-system/secrets/kanal-snapshot"
    )
    assert persisted.where == "Secret kanal-system/kanal-snapshot"


def test_the_secret_parses_to_the_snapshot(persisted: PersistedSnapshot) -> None:
    encoded = base64.b64encode(to_bytes(SNAPSHOT)).decode()
    body = secret_body({SNAPSHOT_KEY: encoded}, {VERSION_ANNOTATION: SNAPSHOT.version})
    assert persisted._parse(body) == SNAPSHOT


def test_a_gzipped_secret_parses_too(persisted: PersistedSnapshot) -> None:
    encoded = base64.b64encode(gzip.compress(to_bytes(SNAPSHOT))).decode()
    assert persisted._parse(secret_body({SNAPSHOT_KEY: encoded})) == SNAPSHOT


def test_a_stale_annotation_is_logged_and_the_content_wins(
    persisted: PersistedSnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = base64.b64encode(to_bytes(SNAPSHOT)).decode()
    body = secret_body({SNAPSHOT_KEY: encoded}, {VERSION_ANNOTATION: "0000000000000000"})
    with caplog.at_level(logging.WARNING):
        assert persisted._parse(body) == SNAPSHOT
    assert f"holds snapshot {SNAPSHOT.version}" in caplog.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "the API answered with no Secret"),
        (secret_body(None), "has no data key snapshot.json"),
        (secret_body({SNAPSHOT_KEY: "***"}), "is not base64"),
        (
            secret_body({SNAPSHOT_KEY: base64.b64encode(b'{"schema_version": 9}').decode()}),
            "holds an invalid snapshot: snapshot schema is not 1",
        ),
    ],
)
def test_a_bad_secret_says_what_is_wrong(
    persisted: PersistedSnapshot, body: bytes, reason: str
) -> None:
    with pytest.raises(SnapshotUnavailable) as err:
        persisted._parse(body)
    assert reason in str(err.value)


def test_reading_the_secret_needs_an_api_url() -> None:
    with pytest.raises(ValueError, match="kube_api_url"):
        PersistedSnapshot(GatewaySettings(), "ns")


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def pod(tmp_path: Path) -> Path:
    """A ServiceAccount mount as a pod has it."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("eyJ.token.sig\n")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("kanal-system")
    return sa


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["gateway", *argv])


def test_in_a_pod_everything_defaults_to_the_service_account(pod: Path) -> None:
    args = parse("--operator", "kanal-operator.kanal-system:9091")
    settings, sub = gateway_settings(args, {"POD_NAME": "kanal-gateway-7d9f-abcde"}, pod)
    assert settings.kube_api_url == IN_CLUSTER_API == "https://kubernetes.default.svc"
    assert settings.kube_ca_file == str(pod / "ca.crt")
    assert settings.kube_token_file == str(pod / "token")
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8080, 9090)
    assert settings.anonymous_tenant is None  # refused unless allowed
    assert sub.operator == "kanal-operator.kanal-system:9091"
    assert sub.gateway_id == "kanal-gateway-7d9f-abcde"
    assert sub.snapshot_namespace == "kanal-system"
    assert sub.snapshot_secret == "kanal-snapshot"
    assert sub.token == ""
    assert (sub.fallback_after, sub.backoff_max) == (5.0, 30.0)


def test_flags_and_environment_win_over_the_pod(pod: Path, tmp_path: Path) -> None:
    token = tmp_path / "operator-token"
    token.write_text("from-file\n")
    args = parse(
        "--operator",
        "10.0.0.5:9091",
        "--operator-token-file",
        str(token),
        "--gateway-id",
        "gw-a",
        "--snapshot-namespace",
        "ops",
        "--snapshot-secret",
        "other",
        "--kube-api-url",
        "https://10.0.0.1:6443",
        "--kube-client-cert",
        "/c.pem",
        "--kube-client-key",
        "/k.pem",
        "--anonymous-tenant",
        "public",
        "--fallback-after",
        "1.5",
        "--reconnect-max",
        "3",
        "--host",
        "127.0.0.1",
        "--port",
        "18080",
        "--redis",
        "redis://r:6379/0",
    )
    environ = {"KANAL_SNAPSHOT_TOKEN": "from-env", "KANAL_SNAPSHOT_NAMESPACE": "env-ns"}
    settings, sub = gateway_settings(args, environ, pod)
    assert settings.kube_api_url == "https://10.0.0.1:6443"
    assert settings.kube_ca_file == str(pod / "ca.crt")  # still the pod's CA
    assert settings.kube_token_file is None  # a client certificate instead
    assert (settings.kube_client_cert_file, settings.kube_client_key_file) == ("/c.pem", "/k.pem")
    assert settings.anonymous_tenant == "public"
    assert (settings.host, settings.port, settings.redis_url) == (
        "127.0.0.1",
        18080,
        "redis://r:6379/0",
    )
    assert (sub.token, sub.gateway_id, sub.snapshot_namespace, sub.snapshot_secret) == (
        "from-file",
        "gw-a",
        "ops",
        "other",
    )
    assert (sub.fallback_after, sub.backoff_max) == (1.5, 3.0)


def test_outside_a_pod_there_is_no_fallback_unless_configured(tmp_path: Path) -> None:
    args = parse("--operator", "127.0.0.1:9091")
    settings, sub = gateway_settings(args, {"KANAL_SNAPSHOT_TOKEN": " t \n"}, tmp_path / "none")
    assert settings.kube_api_url is None
    assert sub.snapshot_namespace is None
    assert sub.token == "t"
    assert sub.gateway_id  # the host name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--operator", "no-port"], "expected HOST:PORT"),
        (["--operator", "h:1", "--kube-client-cert", "/c.pem"], "go together"),
        (["--operator", "h:1", "--operator-token-file", "/does/not/exist"], "operator-token-file"),
        (["--operator", "h:1", "--reconnect-max", "0"], "reconnect-max"),
    ],
)
def test_bad_flags_are_named(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        gateway_settings(parse(*argv), {}, tmp_path)


def test_the_command_needs_the_operator_and_documents_its_flags() -> None:
    run = [sys.executable, "-m", "kanal", "gateway"]
    missing = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--operator" in missing.stderr
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for flag in ("--operator", "--snapshot-namespace", "--anonymous-tenant", "--kube-api-url"):
        assert flag in helped.stdout


# -- the protocol ----------------------------------------------------------------------------


def test_the_snapshot_service_is_one_bidirectional_stream() -> None:
    service = pb.DESCRIPTOR.services_by_name["SnapshotService"]
    [method] = service.methods
    assert method.name == "Subscribe"
    assert method.client_streaming and method.server_streaming
    assert method.input_type.full_name == "kanal.v1.SubscribeRequest"
    assert method.output_type.full_name == "kanal.v1.SnapshotUpdate"
    kinds = pb.SubscribeRequest.DESCRIPTOR.oneofs_by_name["kind"]
    assert [f.name for f in kinds.fields] == ["hello", "ack", "nack"]
    assert hasattr(pb_grpc, "SnapshotServiceStub")
