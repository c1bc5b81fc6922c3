"""The Helm chart charts/kanal with the real helm: lint, render (defaults and a non-default
values file), apply the rendered objects to the test API server (server-side dry run; the
CRDs are already installed), and bad values rejected by values.schema.json."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "kanal"
CUSTOM_VALUES = Path(__file__).resolve().parent / "values-custom.yaml"
KUBE_VERSION = "1.36.3"
PEERING_CRD = ROOT / "operator" / "kanal" / "controller" / "peering-crd.yaml"

Obj = dict[str, Any]


def helm(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template(helm_bin: Path, namespace: str, *args: str, check: bool = True) -> Any:
    return helm(
        helm_bin,
        "template",
        "kanal",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *args,
        check=check,
    )


def render(helm_bin: Path, namespace: str, *args: str) -> list[Obj]:
    out = template(helm_bin, namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def container(objs: list[Obj], kind: str, name: str) -> Obj:
    spec = by_kind(objs)[(kind, name)]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return c


def pod_spec(objs: list[Obj], kind: str, name: str) -> Obj:
    return by_kind(objs)[(kind, name)]["spec"]["template"]["spec"]


def env_of(c: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def rules(objs: list[Obj], kind: str, name: str) -> list[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every rule of a (Cluster)Role."""
    out = []
    for r in by_kind(objs)[(kind, name)]["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    for n in r.get("resourceNames", ["*"]):
                        out.append((g, res, v, n))
    return sorted(out)


# -- CRDs: identical copies --------------------------------------------------------------------


def test_chart_crds_are_identical_to_generated_crds() -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty"
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kanal/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/kanal/crds/"
        )


def test_chart_carries_kopf_peering_crd() -> None:
    copy = CHART / "crds" / "kopfpeerings.kopf.dev.yaml"
    assert copy.read_bytes() == PEERING_CRD.read_bytes(), (
        f"{copy} differs from {PEERING_CRD}: copy it again"
    )
    expected = {p.name for p in (ROOT / "crds").glob("*.yaml")} | {copy.name}
    assert {p.name for p in (CHART / "crds").iterdir()} == expected


# -- lint and render ---------------------------------------------------------------------------


def test_helm_lint(helm_bin: Path) -> None:
    helm(helm_bin, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    helm(
        helm_bin,
        "lint",
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(CUSTOM_VALUES),
        str(CHART),
    )


def test_defaults_render(helm_bin: Path) -> None:
    objs = render(helm_bin, "kanal")
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    assert kinds == sorted(
        [
            ("ServiceAccount", "kanal-operator"),
            ("ServiceAccount", "kanal-gateway"),
            ("Service", "kanal-operator"),
            ("Service", "kanal-gateway"),
            ("Service", "kanal-redis"),
            ("Deployment", "kanal-operator"),
            ("Deployment", "kanal-gateway"),
            ("StatefulSet", "kanal-redis"),
            ("PodDisruptionBudget", "kanal-gateway"),
            ("ClusterRole", "kanal-kanal-operator"),
            ("ClusterRoleBinding", "kanal-kanal-operator"),
            ("ClusterRole", "kanal-kanal-gateway"),
            ("ClusterRoleBinding", "kanal-kanal-gateway"),
            ("Role", "kanal-operator"),
            ("RoleBinding", "kanal-operator"),
            ("Role", "kanal-gateway"),
            ("RoleBinding", "kanal-gateway"),
        ]
    )
    objects = by_kind(objs)

    op = container(objs, "Deployment", "kanal-operator")
    assert op["image"] == "ghcr.io/kanal-dev/kanal:0.1.0"
    assert op["args"][:5] == [
        "operator",
        "--all-namespaces",
        "--peering",
        "--snapshot-port=9443",
        "--snapshot-namespace=kanal",
    ]
    env = env_of(op)
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["KANAL_SNAPSHOT_NAMESPACE"] == "kanal"
    assert env["KANAL_GATEWAY_GRPC"] == "kanal-gateway.kanal.svc.cluster.local:9090"
    assert env["KANAL_PROMPT_FUNCTION_IMAGE"] == "ghcr.io/kanal-dev/kanal-prompt:0.1.0"
    assert [p["port"] for p in objects[("Service", "kanal-operator")]["spec"]["ports"]] == [9443]

    gw = container(objs, "Deployment", "kanal-gateway")
    assert gw["image"] == op["image"]
    assert gw["args"] == [
        "gateway",
        "--operator=kanal-operator.kanal.svc:9443",
        "--port=8080",
        "--grpc-port=9090",
        "--metrics-port=9464",
        "--snapshot-namespace=kanal",
        "--redis=$(KANAL_REDIS_URL)",
        "--log-format=json",
    ]
    assert {p["name"]: p["containerPort"] for p in gw["ports"]} == {
        "http": 8080,
        "grpc": 9090,
        "metrics": 9464,
    }
    gw_env = env_of(gw)
    assert gw_env["KANAL_REDIS_URL"] == "redis://kanal-redis.kanal.svc:6379/0"
    # tracing off by default: the gateway builds no tracer at all
    assert gw_env["OTEL_TRACES_EXPORTER"] == "none"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in gw_env
    annotations = objects[("Deployment", "kanal-gateway")]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        "9464",
        "/metrics",
    )
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = objects[("Service", "kanal-gateway")]["spec"]
    # callers' Service: no metrics port (scrapers go to the pods)
    assert {p["name"]: p["port"] for p in svc["ports"]} == {"http": 8080, "grpc": 9090}
    assert objects[("Deployment", "kanal-gateway")]["spec"]["replicas"] == 2
    assert objects[("PodDisruptionBudget", "kanal-gateway")]["spec"]["minAvailable"] == 1

    redis = container(objs, "StatefulSet", "kanal-redis")
    assert redis["image"] == "redis:7-alpine"
    assert redis["args"][2:] == ["--save", "", "--appendonly", "no"]
    assert "volumeClaimTemplates" not in objects[("StatefulSet", "kanal-redis")]["spec"]


def test_every_pod_is_locked_down(helm_bin: Path) -> None:
    for values in ([], ["-f", str(CUSTOM_VALUES)]):
        for o in render(helm_bin, "kanal", *values):
            if o["kind"] not in ("Deployment", "StatefulSet"):
                continue
            spec = o["spec"]["template"]["spec"]
            name = o["metadata"]["name"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["runAsUser"] > 0, name
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, name
                assert sc["allowPrivilegeEscalation"] is False, name
                assert sc["capabilities"] == {"drop": ["ALL"]}, name
                assert c["resources"]["requests"] and c["resources"]["limits"], name
                assert "livenessProbe" in c, name


def test_rbac_is_least_privilege(helm_bin: Path) -> None:
    objs = render(helm_bin, "kanal")
    op = rules(objs, "ClusterRole", "kanal-kanal-operator")
    expected = set()
    for res in ("modelbackends", "llmroutes"):
        expected |= {("kanal.dev", res, v, "*") for v in ("get", "list", "watch", "patch")}
        expected.add(("kanal.dev", f"{res}/status", "patch", "*"))
    expected |= {
        ("serving.knative.dev", "services", v, "*")
        for v in ("get", "list", "watch", "create", "patch", "delete")
    }
    expected |= {("", "secrets", v, "*") for v in ("get", "list", "watch")}
    expected.add(("", "events", "create", "*"))
    expected |= {
        ("apiextensions.k8s.io", "customresourcedefinitions", v, "*")
        for v in ("get", "list", "watch")
    }
    # cluster-wide operator: only the cluster-scoped peering object (test_rbac_proof runs it)
    expected |= {
        ("kopf.dev", "clusterkopfpeerings", v, "*") for v in ("list", "watch", "create", "patch")
    }
    assert set(op) == expected
    assert rules(objs, "Role", "kanal-operator") == [
        ("", "secrets", "create", "*"),
        ("", "secrets", "patch", "kanal-snapshot"),
        ("", "secrets", "update", "kanal-snapshot"),
    ]
    assert rules(objs, "ClusterRole", "kanal-kanal-gateway") == [
        ("authentication.k8s.io", "tokenreviews", "create", "*")
    ]
    assert rules(objs, "Role", "kanal-gateway") == [("", "secrets", "get", "kanal-snapshot")]
    for o in objs:
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            (subject,) = o["subjects"]
            assert subject["kind"] == "ServiceAccount"
            assert subject["namespace"] == "kanal"
            assert subject["name"] in ("kanal-operator", "kanal-gateway")


def test_custom_values_render(helm_bin: Path) -> None:
    objs = render(helm_bin, "prod", "-f", str(CUSTOM_VALUES))
    objects = by_kind(objs)
    assert ("StatefulSet", "acme-redis") not in objects
    assert ("Service", "acme-redis") not in objects
    secret = objects[("Secret", "acme-redis-url")]
    assert secret["stringData"] == {"url": "rediss://:secret@redis.example.com:6380/2"}

    gw = container(objs, "Deployment", "acme-gateway")
    assert gw["image"] == "registry.example.com/kanal:1.2.3"
    assert gw["imagePullPolicy"] == "Always"
    assert "--operator=acme-operator.prod.svc:9555" in gw["args"]
    assert "--port=8000" in gw["args"] and "--grpc-port=9000" in gw["args"]
    assert "--anonymous-tenant=team-a" in gw["args"]
    assert "--log-format=text" in gw["args"]
    gw_env = env_of(gw)
    assert gw_env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert gw_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert (gw_env["OTEL_TRACES_SAMPLER"], gw_env["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0.25",
    )
    gw_pod = objects[("Deployment", "acme-gateway")]["spec"]["template"]["metadata"]
    assert not any(k.startswith("prometheus.io/") for k in gw_pod["annotations"])
    assert env_of(gw)["KANAL_REDIS_URL"] == {
        "secretKeyRef": {"name": "acme-redis-url", "key": "url"}
    }
    assert pod_spec(objs, "Deployment", "acme-gateway")["imagePullSecrets"] == [{"name": "regcred"}]
    assert "replicas" not in objects[("Deployment", "acme-gateway")]["spec"]  # the HPA owns it
    hpa = objects[("HorizontalPodAutoscaler", "acme-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    pdb = objects[("PodDisruptionBudget", "acme-gateway")]["spec"]
    assert pdb == {
        "maxUnavailable": "25%",
        "selector": pdb["selector"],
    }
    svc = objects[("Service", "acme-gateway")]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "grpc": 9000}

    op = container(objs, "Deployment", "acme-operator")
    assert "--snapshot-port=9555" in op["args"] and "--verbose" in op["args"]
    env = env_of(op)
    assert env["KANAL_GATEWAY_GRPC"] == "acme-gateway.prod.svc.cluster.local:9000"
    assert env["KANAL_PROMPT_FUNCTION_IMAGE"] == "registry.example.com/kanal-prompt:1.2.3"
    assert objects[("Deployment", "acme-operator")]["spec"]["replicas"] == 2

    policies = {n for (k, n) in objects if k == "NetworkPolicy"}
    assert policies == {"acme-gateway", "acme-operator"}  # no bundled Redis, no Redis policy
    callers, scrapers = objects[("NetworkPolicy", "acme-gateway")]["spec"]["ingress"]
    assert [p["port"] for p in callers["ports"]] == ["http", "grpc"]
    assert callers["from"] == [{"namespaceSelector": {"matchLabels": {"kanal.dev/client": "true"}}}]
    assert [p["port"] for p in scrapers["ports"]] == ["metrics"]
    assert scrapers["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert "--metrics-port=9100" in gw["args"]
    op_from = objects[("NetworkPolicy", "acme-operator")]["spec"]["ingress"][0]["from"]
    assert op_from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_persistent_redis_renders_a_claim(helm_bin: Path) -> None:
    objs = render(helm_bin, "kanal", "--set", "redis.persistence.enabled=true")
    sts = by_kind(objs)[("StatefulSet", "kanal-redis")]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "--appendonly" in sts["template"]["spec"]["containers"][0]["args"]
    assert "volumes" not in sts["template"]["spec"]


def test_notes_tell_how_to_call_the_gateway(helm_bin: Path) -> None:
    # `helm template` leaves NOTES.txt out; a client-side dry-run install renders it.
    proc = helm(helm_bin, "install", "kanal", str(CHART), "--dry-run=client", "-n", "kanal")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "http://kanal-gateway.kanal.svc:8080/v1/chat/completions" in notes
    assert 'base_url="http://kanal-gateway.kanal.svc:8080/v1"' in notes
    assert "kubectl apply --server-side -f charts/kanal/crds/" in notes


# -- on the test API server --------------------------------------------------------------------


@pytest.fixture
def chart_crds_applied(kube: Any, crds_installed: list[str]) -> Iterator[None]:
    """The chart's CRDs, applied server-side with dry run: they match what is installed."""
    out = kube.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=kanal-tests",
        "-f",
        str(CHART / "crds"),
    )
    assert "llmroutes.kanal.dev" in out.stdout and "clusterkopfpeerings.kopf.dev" in out.stdout
    yield


@pytest.mark.parametrize("values", ["defaults", "custom"])
def test_rendered_objects_apply_to_api_server(
    helm_bin: Path, kube: Any, chart_crds_applied: None, values: str
) -> None:
    args = [] if values == "defaults" else ["-f", str(CUSTOM_VALUES)]
    objs = render(helm_bin, kube.namespace, *args)
    manifest = yaml.safe_dump_all(objs)
    out = kube.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=manifest)
    applied = out.stdout.split()
    assert len(applied) == len(objs), out.stdout
    assert any(a.startswith("deployment.apps/") for a in applied)
    assert any(a.startswith("clusterrole.rbac.authorization.k8s.io/") for a in applied)


# -- bad values --------------------------------------------------------------------------------

BAD_VALUES = [
    # (--set or --set-string arguments, words the error must contain)
    (["--set", "gateway.replicas=0"], ["gateway", "replicas", "minimum"]),
    (["--set", "operator.replicas=1.5"], ["operator", "replicas", "integer"]),
    (["--set", "image.tag=2"], ["image", "tag", "string"]),
    (["--set", "gateway.httpPort=70000"], ["gateway", "httpPort", "maximum"]),
    (["--set", "operator.snapshotPort=0"], ["operator", "snapshotPort", "minimum"]),
    (["--set", "image.pullPolicy=Sometimes"], ["image", "pullPolicy"]),
    (["--set", "gateway.service.type=Ingress"], ["gateway", "service", "type"]),
    (["--set", "redis.external.url=http://redis:6379"], ["redis", "external", "url"]),
    (["--set", "gateway.anonymousTenant=Not_A_Namespace"], ["anonymousTenant"]),
    (["--set", "gateway.replica=3"], ["gateway", "replica"]),  # a typo: unknown key
    (["--set", "redis.enabled=false"], ["redis.external.url", "redis.external.existingSecret"]),
    (
        ["--set", "gateway.autoscaling.enabled=true,gateway.autoscaling.minReplicas=15"],
        ["minReplicas (15) must not exceed maxReplicas (10)"],
    ),
    (
        ["--set", "gateway.podDisruptionBudget.maxUnavailable=1"],
        ["exactly one of minAvailable and maxUnavailable"],
    ),
    (["--set", "gateway.tracing.exporter=jaeger"], ["tracing", "exporter", "otlp"]),
    (["--set", "gateway.tracing.sampleRatio=2"], ["sampleRatio"]),
    (["--set", "gateway.logFormat=xml"], ["logFormat"]),
    (
        ["--set", "gateway.tracing.exporter=otlp"],
        ["gateway.tracing.endpoint is required when gateway.tracing.exporter is otlp"],
    ),
]


@pytest.mark.parametrize(
    ("args", "words"), BAD_VALUES, ids=[" ".join(a[1:]) for a, _ in BAD_VALUES]
)
def test_bad_values_are_rejected(helm_bin: Path, args: list[str], words: list[str]) -> None:
    proc = template(helm_bin, "kanal", *args, check=False)
    assert proc.returncode != 0, f"accepted {args}"
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_readme_snapshot_token_values(helm_bin: Path, tmp_path: Path) -> None:
    """The README's "On a cluster" values for a shared snapshot token and the NetworkPolicy
    render: both Deployments read KANAL_SNAPSHOT_TOKEN from the Secret."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("cat > snapshot-token.yaml <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    values = tmp_path / "snapshot-token.yaml"
    values.write_text(block)
    objs = render(helm_bin, "kanal", "-f", str(values))
    ref = {"secretKeyRef": {"name": "kanal-snapshot-token", "key": "token"}}
    for name in ("kanal-operator", "kanal-gateway"):
        assert env_of(container(objs, "Deployment", name))["KANAL_SNAPSHOT_TOKEN"] == ref
    policy = by_kind(objs)[("NetworkPolicy", "kanal-operator")]["spec"]["ingress"][0]
    assert policy["ports"] == [{"port": "snapshot", "protocol": "TCP"}]
