"""RBAC proof: the chart's ServiceAccounts, (Cluster)Roles and bindings, rendered by the real
helm and applied for real to the test API server; the real `kanal operator` (with the chart's
own arguments) and `kanal gateway` run with nothing but a TokenRequest token of their
ServiceAccount. They do their whole job without a single 403, and requests outside their
roles are refused with 403 Forbidden."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from distkit import GatewayProcess
from opkit import (
    Operator,
    cond_status,
    condition,
    kanal_obj,
    ksvc,
    play_knative,
    snapshot_secret,
    wait_for,
)
from test_chart import container, render

from harness import Kube
from harness.procs import free_ports
from kanal.snapshot import SNAPSHOT_SECRET

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
CLUSTER_KINDS = ("ClusterRole", "ClusterRoleBinding")
# what kopf and the Kubernetes client log when the API server refuses a request
TIMESTAMP = re.compile(r"^\[[^\]]*\]")
REFUSED = re.compile(r"\b[Ff]orbidden\b|\b403\b|[Pp]ermission|cannot (list|watch|get|patch|create)")

Obj = dict[str, Any]


@dataclass
class Identity:
    """A ServiceAccount of the chart: its token and a kubeconfig holding only that token."""

    account: str
    token: str
    kubeconfig: Path


@dataclass
class ChartRbac:
    objects: list[Obj]
    operator: Identity
    gateway: Identity


def sa_kubeconfig(kube: Kube, path: Path, account: str, token: str) -> Path:
    """A kubeconfig with the API server, its CA, and the bearer token: no client cert."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": kube.control_plane.server,
                    "certificate-authority": str(kube.control_plane.ca_path),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": "test", "user": account, "namespace": kube.namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def kubectl_as(
    kube: Kube, who: Identity, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real kubectl with only the ServiceAccount's kubeconfig (never the admin's)."""
    argv = [
        str(kube.control_plane.kubectl_bin),
        f"--kubeconfig={who.kubeconfig}",
        f"--cache-dir={who.kubeconfig.parent / 'kubectl-cache'}",
        *args,
    ]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)


@pytest.fixture
def chart_rbac(
    helm_bin: Path,
    kube: Kube,
    tmp_path: Path,
    crds_installed: list[str],
    knative_crd_installed: list[str],
) -> Iterator[ChartRbac]:
    """The chart (release `kanal`, namespace of the test), its CRDs applied for real (kopf's
    peering CRDs included), its ServiceAccounts and RBAC applied for real, a token each."""
    chart_crds = sorted((ROOT / "charts" / "kanal" / "crds").glob("*.yaml"))
    kube.control_plane.apply_crds(chart_crds, restart_controllers=False)
    objs = render(helm_bin, kube.namespace)
    rbac = [o for o in objs if o["kind"] in RBAC_KINDS]
    assert {o["kind"] for o in rbac} == set(RBAC_KINDS)
    cluster_scoped = [
        f"{o['kind'].lower()}/{o['metadata']['name']}" for o in rbac if o["kind"] in CLUSTER_KINDS
    ]
    try:
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        identities = {}
        for account in ("kanal-operator", "kanal-gateway"):
            # TokenRequest, as the kubelet gets a pod's projected token
            token = kube.kubectl("create", "token", account, "--duration=1h").stdout.strip()
            path = sa_kubeconfig(kube, tmp_path / f"{account}.kubeconfig", account, token)
            identities[account] = Identity(account, token, path)
        yield ChartRbac(objs, identities["kanal-operator"], identities["kanal-gateway"])
    finally:
        kube.kubectl("delete", "--wait=false", "--ignore-not-found", *cluster_scoped, check=False)


def test_tokens_authenticate_as_the_service_accounts(kube: Kube, chart_rbac: ChartRbac) -> None:
    for who in (chart_rbac.operator, chart_rbac.gateway):
        out = kubectl_as(kube, who, "auth", "whoami", "-o", "json")
        assert out.returncode == 0, out.stderr
        user = json.loads(out.stdout)["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{kube.namespace}:{who.account}"
        assert "system:masters" not in user["groups"]


# -- the whole job --------------------------------------------------------------------------


def operator_under_chart(kube: Kube, rbac: ChartRbac, tmp_path: Path) -> tuple[Operator, int, int]:
    """`kanal operator` with the arguments and environment of the chart's Deployment; only
    the ports (free ones on 127.0.0.1) and the peering object's name (unique) differ."""
    c = container(rbac.objects, "Deployment", "kanal-operator")
    snapshot_port, health_port = free_ports(2)
    args: list[str] = []
    for arg in c["args"]:
        if arg.startswith("--snapshot-port="):
            arg = f"--snapshot-port={snapshot_port}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{health_port}/healthz"
        args.append(arg)
    assert args[0] == "operator" and "--all-namespaces" in args and "--peering" in args
    args += ["--snapshot-host=127.0.0.1", f"--peering-name=kanal-{kube.namespace}"]
    pod_name = f"kanal-operator-{secrets.token_hex(4)}"
    # a clean environment, as in the pod: nothing of the test runner's (no admin kubeconfig)
    env: dict[str, str] = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    for item in c["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": pod_name, "metadata.namespace": kube.namespace}[
                path
            ]
    env["KUBECONFIG"] = str(rbac.operator.kubeconfig)  # the token, nothing else
    argv = [sys.executable, "-m", "kanal", *args]
    op = Operator("operator", argv, env, tmp_path / "operator.log").start()
    return op, snapshot_port, health_port


def peering_status(kube: Kube) -> dict[str, Any]:
    obj = kube.custom.get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", f"kanal-{kube.namespace}"
    )
    return dict(obj.get("status") or {})


def openai_key(kube: Kube) -> str | None:
    found = snapshot_secret(kube)
    if found is None:
        return None
    key = found[1].backends[f"{kube.namespace}/openai"].api_key
    return key.get_secret_value() if key is not None else None


def persisted_version(kube: Kube) -> str | None:
    found = snapshot_secret(kube)
    return found[0] if found else None


def refused_lines(log: str) -> list[str]:
    """Lines that say the API server refused something (the timestamp, e.g. ",403", aside)."""
    return [line for line in log.splitlines() if REFUSED.search(TIMESTAMP.sub("", line))]


def test_operator_and_gateway_do_their_whole_job_under_the_chart_rbac(
    kube: Kube, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    ns = kube.namespace
    kube.kubectl("create", "secret", "generic", "openai-key", "--from-literal=apiKey=sk-one")
    op, snapshot_port, health_port = operator_under_chart(kube, chart_rbac, tmp_path)
    gateways: list[GatewayProcess] = []
    try:
        # kopf peering: the operator created its ClusterKopfPeering and registered in it
        op.wait_log("Resuming operations", timeout=45)
        wait_for(
            "the operator in the peering",
            lambda: any(op.env["POD_ID"] in p for p in peering_status(kube)),
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as r:
            assert r.status == 200

        kube.kubectl("apply", "-f", str(EXAMPLES))

        # ModelBackend.serving -> Knative Service (create), its status written (status patch)
        wait_for("ksvc local-llama", lambda: ksvc(kube, "local-llama"))
        wait_for("ksvc summarize-ticket-prompt", lambda: ksvc(kube, "summarize-ticket-prompt"))
        play_knative(kube, "local-llama")
        wait_for(
            "local-llama Ready", lambda: cond_status(kube, "modelbackends", "local-llama") == "True"
        )
        assert kanal_obj(kube, "modelbackends", "local-llama")["status"]["url"] == (
            f"http://local-llama.{ns}.svc.cluster.local"
        )
        # LlmRoutes Ready
        for name in ("chat", "demo", "summarize-ticket"):
            wait_for(
                f"route {name} Ready", lambda n=name: cond_status(kube, "llmroutes", n) == "True"
            )

        # the snapshot Secret (create), with the key read from another Secret (get/list/watch)
        version, snapshot = wait_for("the snapshot Secret", lambda: snapshot_secret(kube))
        assert version == snapshot.version
        assert f"{ns}/demo" in snapshot.routes
        assert openai_key(kube) == "sk-one"

        # key rotation: the Secret watch notices, the snapshot Secret is patched
        kube.kubectl(
            "patch",
            "secret",
            "openai-key",
            "--type=merge",
            "-p",
            json.dumps({"stringData": {"apiKey": "sk-two"}}),
        )
        wait_for("the rotated key in the snapshot", lambda: openai_key(kube) == "sk-two")

        # a spec edit patches the Knative Service (dry run + patch)
        kube.kubectl(
            "patch",
            "mb",
            "local-llama",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"serving": {"scale": {"min": 0, "max": 5}}}}),
        )
        wait_for(
            "ksvc local-llama patched",
            lambda: (
                (ksvc(kube, "local-llama") or {})["spec"]["template"]["metadata"]["annotations"][
                    "autoscaling.knative.dev/max-scale"
                ]
                == "5"
            ),
        )
        # a prompt no longer exposed: its function Service is deleted
        kube.kubectl(
            "patch",
            "llmroute",
            "summarize-ticket",
            "--type=json",
            "-p",
            json.dumps([{"op": "remove", "path": "/spec/prompt/expose"}]),
        )
        wait_for("function Service deleted", lambda: ksvc(kube, "summarize-ticket-prompt") is None)

        # a Knative Service it does not own: the operator reports it as an Event (create)
        kube.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "serving.knative.dev/v1",
                    "kind": "Service",
                    "metadata": {"name": "taken"},
                    "spec": {"template": {"spec": {"containers": [{"image": "x.test/y:1"}]}}},
                }
            ),
        )
        kube.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "kanal.dev/v1alpha1",
                    "kind": "ModelBackend",
                    "metadata": {"name": "taken"},
                    "spec": {
                        "provider": "openai-compatible",
                        "serving": {"image": "x.test/model:1"},
                        "models": [{"name": "m", "contextWindow": 1000}],
                    },
                }
            ),
        )

        def conflict_event() -> Any:
            events = kube.core.list_namespaced_event(ns).items
            return [
                e
                for e in events
                if e.involved_object.name == "taken" and "not controlled by" in (e.message or "")
            ]

        (event, *_) = wait_for("an Event on ModelBackend taken", conflict_event)
        assert event.involved_object.kind == "ModelBackend"
        wait_for(
            "ServiceConflict on ModelBackend taken",
            lambda: (
                (c := condition(kanal_obj(kube, "modelbackends", "taken"), "Ready"))
                and c["reason"] == "ServiceConflict"
            ),
        )

        # the gateway with its own token: snapshots from the operator, callers by TokenReview
        gw_token = tmp_path / "gateway.token"
        gw_token.write_text(chart_rbac.gateway.token)
        gw_kube = [
            "--kube-api-url",
            kube.control_plane.server,
            "--kube-ca-file",
            str(kube.control_plane.ca_path),
            "--kube-token-file",
            str(gw_token),
            "--snapshot-namespace",
            ns,
        ]
        kube.kubectl("create", "serviceaccount", "caller")
        caller = kube.kubectl("create", "token", "caller", "--duration=10m").stdout.strip()
        gw = GatewayProcess(
            tmp_path, "gw-live", f"127.0.0.1:{snapshot_port}", anonymous=False, kube_args=gw_kube
        )
        gateways.append(gw)
        # the version it serves is the operator's latest (read again: it may still publish)
        gw.wait_for(
            lambda: gw.version() == persisted_version(kube), "serves the latest", timeout=30
        )
        status, body = gw.chat("demo", caller)
        assert status == 200, body
        # the operator records the gateway's ACK on the snapshot Secret (patch)
        wait_for(
            "the ACK on the snapshot Secret",
            lambda: (
                "gw-live"
                in (
                    kube.core.read_namespaced_secret(SNAPSHOT_SECRET, ns).metadata.annotations or {}
                ).get("kanal.dev/gateway-acks", "")
            ),
        )

        # the operator stops (leaves the peering); a new gateway reads the persisted Secret
        assert op.stop() == 0, op.log()
        assert not any(op.env["POD_ID"] in p for p in peering_status(kube))
        fallback = GatewayProcess(
            tmp_path,
            "gw-fallback",
            f"127.0.0.1:{snapshot_port}",
            anonymous=False,
            kube_args=gw_kube,
        )
        gateways.append(fallback)
        latest = persisted_version(kube)
        assert latest is not None
        fallback.wait_version(latest, timeout=30)
        status, body = fallback.chat("demo", caller)
        assert status == 200, body
    finally:
        for g in gateways:
            g.stop()
        op.kill()
        kube.kubectl(
            "delete", "clusterkopfpeering", f"kanal-{ns}", "--ignore-not-found", check=False
        )
    log = op.log()
    assert "created Knative Service" in log
    assert not refused_lines(log), "the API server refused the operator:\n" + "\n".join(
        refused_lines(log)
    )
    for g in gateways:
        assert not refused_lines(g.log()), f"{g.name} was refused:\n{g.log()}"


# -- outside the roles ----------------------------------------------------------------------

# (who, kubectl arguments, stdin); {ns} is the release namespace, {other} another namespace
DENIED: list[tuple[str, list[str], str | None]] = [
    ("operator", ["delete", "namespace", "{ns}"], None),
    ("operator", ["create", "deployment", "x", "--image=x.test/y:1", "-n", "{ns}"], None),
    ("operator", ["create", "configmap", "x", "-n", "{ns}"], None),
    (
        "operator",
        [
            "create",
            "clusterrolebinding",
            "x",
            "--clusterrole=cluster-admin",
            "--serviceaccount={ns}:kanal-operator",
        ],
        None,
    ),
    ("operator", ["create", "secret", "generic", "x", "-n", "{other}"], None),
    ("operator", ["delete", "secret", "openai-key", "-n", "{ns}"], None),
    (
        "operator",
        [
            "patch",
            "secret",
            "openai-key",
            "-n",
            "{ns}",
            "--type=merge",
            "-p",
            '{"metadata": {"labels": {"x": "y"}}}',
        ],
        None,
    ),
    ("operator", ["delete", "modelbackend", "m", "-n", "{ns}"], None),
    ("operator", ["create", "-n", "{ns}", "-f", "-"], "LLMROUTE"),
    ("operator", ["get", "pods", "-A"], None),
    ("gateway", ["get", "secret", "openai-key", "-n", "{ns}"], None),
    ("gateway", ["get", "secrets", "-n", "{ns}"], None),
    ("gateway", ["get", "modelbackends", "-A"], None),
    (
        "gateway",
        [
            "patch",
            "secret",
            SNAPSHOT_SECRET,
            "-n",
            "{ns}",
            "--type=merge",
            "-p",
            '{"metadata": {"labels": {"x": "y"}}}',
        ],
        None,
    ),
]
LLMROUTE = {
    "apiVersion": "kanal.dev/v1alpha1",
    "kind": "LlmRoute",
    "metadata": {"name": "forged"},
    "spec": {"backends": [{"backendRef": {"name": "m"}, "model": "m"}]},
}


def test_requests_outside_the_roles_are_forbidden(
    kube: Kube, chart_rbac: ChartRbac, tmp_path: Path
) -> None:
    ns = kube.namespace
    other = f"{ns[:50]}-other"
    kube.kubectl("create", "namespace", other, "-n", "default")
    try:
        kube.kubectl("create", "secret", "generic", "openai-key", "--from-literal=apiKey=k")
        kube.kubectl("create", "secret", "generic", SNAPSHOT_SECRET, "--from-literal=a=b")
        allowed: list[str] = []
        for who, args, stdin in DENIED:
            identity = chart_rbac.operator if who == "operator" else chart_rbac.gateway
            argv = [a.replace("{ns}", ns).replace("{other}", other) for a in args]
            text = yaml.safe_dump(LLMROUTE) if stdin == "LLMROUTE" else None
            out = kubectl_as(kube, identity, *argv, input=text)
            # the API server's 403 message, for this very ServiceAccount
            user = f"system:serviceaccount:{ns}:{identity.account}"
            if out.returncode == 0 or f'forbidden: User "{user}" cannot' not in out.stderr:
                allowed.append(f"{identity.account}: kubectl {' '.join(argv)}: {out.stderr}")
        assert not allowed, "not refused with 403:\n" + "\n".join(allowed)

        # ... while what the roles grant works with the same tokens
        op, gw = chart_rbac.operator, chart_rbac.gateway
        granted = [
            (op, ["get", "secret", "openai-key", "-n", ns]),
            (op, ["get", "secrets", "-A", "-o", "name"]),
            (
                op,
                [
                    "patch",
                    "secret",
                    SNAPSHOT_SECRET,
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    '{"metadata": {"labels": {"x": "y"}}}',
                ],
            ),
            (op, ["get", "clusterkopfpeerings"]),
            (gw, ["get", "secret", SNAPSHOT_SECRET, "-n", ns]),
        ]
        for who, argv in granted:
            out = kubectl_as(kube, who, *argv)
            assert out.returncode == 0, (who.account, argv, out.stderr)
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": op.token},
        }
        out = kubectl_as(
            kube,
            gw,
            "create",
            "--validate=false",
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(review),
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["authenticated"] is True
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false", "-n", "default", check=False)
