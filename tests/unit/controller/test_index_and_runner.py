"""Index entries, kopf settings, handler registration, the `kanal operator` command line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
from ctlkit import NS, example, mock_backend, route_body

from kanal.cli import _operator_config, build_parser
from kanal.controller.handlers import register
from kanal.controller.index import parse_backend, parse_route, parse_secret, parse_service
from kanal.controller.kube import Kube
from kanal.controller.publisher import InMemoryPublisher, SnapshotPublisher
from kanal.controller.reconcile import Reconciler
from kanal.controller.runner import PEERING_CRD, OperatorConfig, default_priority, kopf_settings
from kanal.controller.sync import Sync

# -- index ----------------------------------------------------------------------------------


def test_backend_entries() -> None:
    body = mock_backend()
    body["status"] = {"url": "http://x", "conditions": []}
    entry = parse_backend(body)
    assert entry.key == (NS, "mock")
    assert entry.model is not None and entry.error is None
    assert entry.model.status is not None and entry.model.status.url == "http://x"
    # only what the compiler reads is in the fingerprint (not conditions)
    body["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert parse_backend(body).fingerprint == entry.fingerprint
    body["status"]["url"] = "http://y"
    assert parse_backend(body).fingerprint != entry.fingerprint
    body["metadata"]["generation"] = 2
    assert parse_backend(body).fingerprint != entry.fingerprint

    body["spec"]["provider"] = "nonsense"
    broken = parse_backend(body)
    assert broken.model is None
    assert broken.error is not None and "provider" in broken.error


def test_route_entries() -> None:
    entry = parse_route(route_body("r", ("mock", "m")))
    assert entry.model is not None and entry.key == (NS, "r")
    deleting = route_body("r", ("mock", "m"))
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert parse_route(deleting).deleting


def test_secret_entries_keep_only_api_keys() -> None:
    plain = parse_secret(
        {"metadata": {"name": "s", "namespace": NS, "resourceVersion": "5"}, "data": {"a": "Yg=="}}
    )
    assert (plain.api_key, plain.key_b64, plain.fingerprint) == (False, None, ("5",))
    assert plain.as_api_key_secret() is None
    key = parse_secret(
        {
            "metadata": {
                "name": "k",
                "namespace": NS,
                "resourceVersion": "6",
                "labels": {"kanal.dev/api-key": "true", "team": "a"},
            },
            "data": {"key": "c2VjcmV0", "other": "eA=="},
        }
    )
    secret = key.as_api_key_secret()
    assert secret is not None
    assert secret.values() == {"key": "secret"}
    assert secret.metadata.labels == {"kanal.dev/api-key": "true", "team": "a"}


def test_service_entries() -> None:
    svc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "llm",
            "namespace": NS,
            "uid": "s1",
            "generation": 3,
            "managedFields": [{"big": "x" * 100}],
            "ownerReferences": [{"uid": "o1", "controller": True}],
        },
        "spec": {"template": {}},
        "status": {"observedGeneration": 3},
    }
    entry = parse_service(svc)
    assert (entry.key, entry.uid, entry.generation, entry.owner_uid) == ((NS, "llm"), "s1", 3, "o1")
    assert "managedFields" not in entry.body["metadata"]


# -- kopf settings and registration --------------------------------------------------------


def test_kopf_settings_use_kanal_names() -> None:
    settings = kopf_settings(OperatorConfig(snapshot_namespace="kanal", peering="on"))
    assert settings.persistence.finalizer == "kanal.dev/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "kanal.dev"
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.persistence.diffbase_storage.prefix == "kanal.dev"
    assert settings.peering.name == "kanal"
    assert settings.peering.mandatory and not settings.peering.standalone
    off = kopf_settings(OperatorConfig(snapshot_namespace="kanal", peering="off", priority=7))
    assert off.peering.standalone and not off.peering.mandatory
    assert off.peering.priority == 7


def test_earlier_start_has_higher_priority() -> None:
    assert default_priority(1_000.0) > default_priority(1_000.001) > 0
    assert default_priority() < 2**53  # exact in JSON


def test_peering_crd_is_shipped() -> None:
    text = PEERING_CRD.read_text()
    assert "clusterkopfpeerings.kopf.dev" in text and "kopfpeerings.kopf.dev" in text


def test_handlers_register() -> None:
    registry = kopf.OperatorRegistry()
    publisher: SnapshotPublisher = InMemoryPublisher()
    kube = Kube.__new__(Kube)  # never called here
    sync = Sync(kube, publisher, namespace="kanal")
    register(registry, kube=kube, reconciler=Reconciler(kube), sync=sync)
    ids = {h.id for h in registry._indexing.get_all_handlers()}
    assert ids == {"kanal_backends", "kanal_routes", "kanal_secrets", "kanal_services"}
    changing = {h.id for h in registry._changing.get_all_handlers()}
    assert changing == {"reconcile"}
    watching = {h.id for h in registry._watching.get_all_handlers()}
    assert watching == {
        "backend-changed",
        "route-changed",
        "secret-changed",
        "service-changed",
        "knative-installed/metadata.name",  # kopf appends the field filter
    }


def test_in_memory_publisher_is_a_publisher() -> None:
    publisher = InMemoryPublisher()
    assert isinstance(publisher, SnapshotPublisher)
    assert publisher.current is None and publisher.acks() == {}


# -- command line ---------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["operator", *argv])


def test_operator_config_defaults(tmp_path: Path) -> None:
    config = _operator_config(parse(), {}, tmp_path)
    assert config.namespaces == ()
    assert config.peering == "auto"
    assert config.snapshot_namespace == "default"
    assert config.snapshot_port is None
    assert config.build.progress_deadline == "30m"
    assert config.debounce == 0.05


def test_operator_config_flags_env_and_pod(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("kanal-system\n")
    token = tmp_path / "token"
    token.write_text("t0k\n")
    config = _operator_config(
        parse(
            "-n",
            "a",
            "-n",
            "b",
            "-n",
            "a",
            "--peering",
            "--snapshot-port",
            "9091",
            "--snapshot-token-file",
            str(token),
            "--prompt-function-image",
            "img:2",
        ),
        {"KANAL_GATEWAY_GRPC": "gw:1"},
        tmp_path,
    )
    assert config.namespaces == ("a", "b")
    assert config.peering == "on"
    assert config.snapshot_namespace == "kanal-system"  # the pod's namespace
    assert config.snapshot_port == 9091
    assert config.snapshot_token == "t0k"
    assert config.build.prompt_function_image == "img:2"
    assert config.build.gateway_grpc == "gw:1"
    env = _operator_config(parse("--standalone"), {"KANAL_NAMESPACE": "ops"}, tmp_path)
    assert env.snapshot_namespace == "ops" and env.peering == "off"
    flag = _operator_config(
        parse("--snapshot-namespace", "x"), {"KANAL_SNAPSHOT_NAMESPACE": "y"}, tmp_path
    )
    assert flag.snapshot_namespace == "x"
    with pytest.raises(ValueError, match="snapshot-token-file"):
        _operator_config(parse("--snapshot-token-file", str(tmp_path / "nope")), {}, tmp_path)


def test_operator_command_line_errors() -> None:
    def kanal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kanal", "operator", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    both = kanal("--peering", "--standalone")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    scope = kanal("-A", "-n", "x")
    assert scope.returncode == 2
    assert "--snapshot-port" in kanal("--help").stdout


def test_examples_resolve() -> None:
    # the examples used by these tests exist as described
    assert example("ModelBackend", "local-llama")["spec"]["serving"]["scale"]["max"] == 3


class _Refusing:
    """A ServiceApi that says Knative is not installed."""

    async def knative_installed(self) -> bool:
        return False

    async def get_service(self, namespace: str, name: str) -> None:
        return None


def _reconcile_handler(registry: kopf.OperatorRegistry, resource_plural: str) -> Any:
    for handler in registry._changing.get_all_handlers():
        if handler.id == "reconcile" and handler.selector.plural == resource_plural:  # type: ignore[union-attr]
            return handler.fn
    raise AssertionError("no reconcile handler")


def test_handlers_map_not_yet_and_invalid_to_kopf_errors() -> None:
    import asyncio

    from ctlkit import served_backend

    registry = kopf.OperatorRegistry()
    sync = Sync(Kube.__new__(Kube), InMemoryPublisher(), namespace="kanal")
    register(registry, kube=Kube.__new__(Kube), reconciler=Reconciler(_Refusing()), sync=sync)  # type: ignore[arg-type]
    fn = _reconcile_handler(registry, "modelbackends")
    indices: dict[str, Any] = {"kanal_services": {}}

    with pytest.raises(kopf.TemporaryError) as temporary:
        asyncio.run(fn(body=kopf.Body(served_backend("llm")), **indices))
    assert "Knative Serving is not installed" in str(temporary.value)
    result = sync.reconciled[("ModelBackend", (NS, "llm"))]
    assert (result.status, result.reason) == ("False", "KnativeServingMissing")

    with pytest.raises(kopf.PermanentError):
        asyncio.run(fn(body=kopf.Body(served_backend("bad.name")), **indices))
    result = sync.reconciled[("ModelBackend", (NS, "bad.name"))]
    assert (result.status, result.reason) == ("False", "InvalidName")

    # nothing to run: no API call at all (the index shows no Service)
    asyncio.run(fn(body=kopf.Body(mock_backend()), **indices))
    assert sync.reconciled[("ModelBackend", (NS, "mock"))].status == "True"
