"""kanal installed before Knative Serving: backends wait with a reason, then get their
Services as soon as the Knative CRD is established. (And --peering without kopf's peering
CRDs is refused at start.)

Needs an API server without Knative, so it starts its own (the session's has the CRD)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from opkit import Operators, condition, kanal_obj, ksvc, wait_for

from harness import ControlPlane, Kube

TESTS = Path(__file__).resolve().parents[2]
REPO = TESTS.parent


@pytest.fixture
def bare_kube(k8s_bin_dir: Path, kubectl_bin: Path) -> Iterator[Kube]:
    """A private control plane with kanal's CRDs and no Knative."""
    with ControlPlane(k8s_bin_dir, kubectl_bin) as cp:
        cp.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
        api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cp.kubeconfig), persist_config=False
        )
        k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="late")))
        try:
            yield Kube(cp, cp.kubeconfig, "late", api)
        finally:
            api.close()  # type: ignore[no-untyped-call]


def test_backends_wait_for_knative_then_get_their_services(bare_kube: Kube, tmp_path: Path) -> None:
    kube = bare_kube
    ops = Operators(kube, tmp_path)
    try:
        # this API server has no kopf peering CRDs either: --peering says so and exits
        refused = ops.start("--peering", name="peering", wait=False)
        assert refused.proc is not None
        assert refused.proc.wait(30) == 2
        assert "install peering-crd.yaml" in refused.log()

        op = ops.start()
        backend = {
            "apiVersion": "kanal.dev/v1alpha1",
            "kind": "ModelBackend",
            "metadata": {"name": "llm"},
            "spec": {
                "provider": "openai-compatible",
                "serving": {"image": "example.test/model:1"},
                "models": [{"name": "m", "contextWindow": 1000}],
            },
        }
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(backend))
        waiting = wait_for(
            "Reconciled False: Knative missing",
            lambda: (
                (c := condition(kanal_obj(kube, "modelbackends", "llm"), "Reconciled"))
                and c["status"] == "False"
                and c
            ),
        )
        assert waiting["reason"] == "KnativeServingMissing"
        ready = condition(kanal_obj(kube, "modelbackends", "llm"), "Ready")
        assert ready is not None and ready["status"] == "False"
        op.wait_log("Knative Serving is not installed")  # kopf's TemporaryError, retried

        kube.control_plane.apply_crds([TESTS / "fixtures" / "knative-serving-crd.yaml"])
        # well before kopf's 30 s retry: the CRD's arrival triggers it
        wait_for("ksvc llm", lambda: ksvc(kube, "llm"), timeout=15)
        wait_for(
            "Reconciled True",
            lambda: (
                (c := condition(kanal_obj(kube, "modelbackends", "llm"), "Reconciled"))
                and c["status"] == "True"
            ),
            timeout=15,
        )
    finally:
        ops.stop_all()
