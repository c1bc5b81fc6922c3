"""Shared fixtures: the real test bench (Redis, kube-apiserver + etcd + kube-controller-manager,
kubectl, helm), started once per session and stopped at the end.

A missing tool skips the tests that need it with a reason (shown by -ra), or fails them when
KANAL_REQUIRE_TOOLS=1 (what `make test` sets). KANAL_KEEP_RUN_DIR=1 keeps the control plane's
run directory (logs, certificates, kubeconfig) for debugging."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import redis as redis_client
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from harness import (
    ControlPlane,
    Kube,
    RedisServer,
    ToolMissing,
    find_helm,
    find_k8s_bin,
    find_kubectl,
    find_redis_server,
    namespace_for,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FOLDER_MARKERS = ("unit", "integration", "e2e")
T = TypeVar("T")


# -- markers ---------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/unit -> unit, tests/integration -> integration, tests/e2e -> e2e."""
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if top in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, top))


# -- tools -----------------------------------------------------------------------------------


def missing(reason: str) -> NoReturn:
    """Skip with the reason, or fail when KANAL_REQUIRE_TOOLS=1. Never silent."""
    if os.environ.get("KANAL_REQUIRE_TOOLS") == "1":
        pytest.fail(f"required tool missing (KANAL_REQUIRE_TOOLS=1): {reason}", pytrace=False)
    pytest.skip(reason)


def need(finder: Callable[[], T]) -> T:
    try:
        return finder()
    except ToolMissing as e:
        reason = e.reason
    missing(reason)  # outside `except`: no "during handling..." noise in the report


def announce(request: pytest.FixtureRequest, line: str) -> None:
    """Write a line to the terminal even while output is captured."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        if reporter is not None:
            if getattr(reporter, "_width_of_current_line", 0):
                reporter.write("\n")  # after progress dots (-q)
            reporter.write_line(line)
        else:
            print(line)


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    return need(find_kubectl)


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return need(find_helm)


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    return need(find_k8s_bin)


# -- redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a session-wide redis-server on 127.0.0.1 (no persistence)."""
    with RedisServer(need(find_redis_server)) as server:
        announce(
            request, f"[bench] redis-server ready in {server.startup_seconds:.2f}s at {server.url}"
        )
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session server's URL, emptied (FLUSHALL) before the test."""
    conn = redis_client.Redis.from_url(redis_server)
    try:
        conn.flushall()
    finally:
        conn.close()
    return redis_server


# -- kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, k8s_bin_dir: Path, kubectl_bin: Path
) -> Iterator[ControlPlane]:
    keep = os.environ.get("KANAL_KEEP_RUN_DIR") == "1"
    with ControlPlane(k8s_bin_dir, kubectl_bin, keep_run_dir=keep) as cp:
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in cp.timings.items())
        announce(
            request,
            f"[bench] control plane ready in {cp.startup_seconds:.1f}s "
            f"({phases}) at {cp.server}, run dir {cp.run_dir}",
        )
        yield cp


@pytest.fixture
def kube(request: pytest.FixtureRequest, control_plane: ControlPlane) -> Iterator[Kube]:
    # A new Configuration per fixture; the global default config is never touched.
    api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    namespace = namespace_for(request.node.name)
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        yield Kube(control_plane, control_plane.kubeconfig, namespace, api)
    finally:
        with contextlib.suppress(k8s.ApiException):
            core.delete_namespace(namespace)  # don't wait: the namespace controller finishes it
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def crds_installed(control_plane: ControlPlane) -> list[str]:
    """Every crds/*.yaml of the repo, applied server-side and Established. Returns their
    `customresourcedefinition.apiextensions.k8s.io/NAME`s. Restarts kube-controller-manager
    so its garbage collector knows the new kinds at once."""
    files = sorted((REPO_ROOT / "crds").glob("*.yaml"))
    if not files:
        pytest.skip(f"no CRD manifests yet: {REPO_ROOT / 'crds'}/*.yaml matches nothing")
    return control_plane.apply_crds(files)


@pytest.fixture(scope="session")
def knative_crd_installed(control_plane: ControlPlane) -> list[str]:
    """A minimal Knative Serving `services.serving.knative.dev` CRD (no Knative controller:
    tests play it by patching /status)."""
    return control_plane.apply_crds([TESTS_DIR / "fixtures" / "knative-serving-crd.yaml"])
