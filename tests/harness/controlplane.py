"""A real Kubernetes control plane without nodes (the envtest pattern): etcd, kube-apiserver and
kube-controller-manager (garbage collector, namespace and SA-token controllers) on 127.0.0.1,
all in a temporary run directory that is removed on exit."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import yaml

from harness.certs import CertFiles, write_certs
from harness.procs import Proc, StartupError, free_ports, wait_until

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Canonical 1.36 names (the old "garbagecollector", "namespace", ... are aliases).
CONTROLLERS = "garbage-collector-controller,namespace-controller,serviceaccount-token-controller"
PROBE_OWNER = "kanal-bench-probe-owner"
PROBE_CHILD = "kanal-bench-probe-child"


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike CalledProcessError, str() includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {self.output}"


class ControlPlane:
    """Context manager. Attributes once started: `run_dir`, `kubeconfig`, `server`, `ca_path`,
    `sa_key_path`, `certs`, `etcd_url`, `timings` (seconds per phase) and `startup_seconds`."""

    def __init__(
        self,
        bin_dir: Path,
        kubectl_bin: Path,
        *,
        startup_timeout: float = 90.0,
        keep_run_dir: bool = False,
    ) -> None:
        self.bin_dir = bin_dir
        self.kubectl_bin = kubectl_bin
        self.startup_timeout = startup_timeout
        self.keep_run_dir = keep_run_dir
        self.run_dir = Path()
        self.kubeconfig = Path()
        self.server = ""
        self.etcd_url = ""
        self.certs: CertFiles | None = None
        self.procs: list[Proc] = []
        self.timings: dict[str, float] = {}
        self.startup_seconds = 0.0
        self._ssl: ssl.SSLContext | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self._certs().ca_cert

    @property
    def sa_key_path(self) -> Path:
        return self._certs().sa_key

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,  # mirrors subprocess.run
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane."""
        argv = [
            str(self.kubectl_bin),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.run_dir / 'kubectl-cache'}",
            *args,
        ]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def apply_crds(
        self, files: Sequence[Path], timeout: str = "60s", restart_controllers: bool = True
    ) -> list[str]:
        """Server-side apply CRD manifests, wait until Established; returns `kind/name`s.

        Then restarts kube-controller-manager (about 0.3 s): its garbage collector rediscovers
        resource types only every 30 s (hard-coded), so without a restart, dependents of a
        deleted custom resource linger for 30-45 s."""
        file_args = [arg for f in files for arg in ("-f", str(f))]
        applied = self.kubectl(
            "apply", "--server-side", "--field-manager=kanal-tests", "-o", "name", *file_args
        )
        self.kubectl("wait", "--for=condition=established", f"--timeout={timeout}", *file_args)
        if restart_controllers:
            self.restart_controller_manager()
        return applied.stdout.split()

    def restart_controller_manager(self) -> None:
        """Stop kube-controller-manager and start it again (it then knows every current
        resource type); returns once its garbage collector works."""
        for proc in [p for p in self.procs if p.name == "kube-controller-manager"]:
            proc.stop()
            self.procs.remove(proc)
        self._start_controller_manager()

    def start(self) -> None:
        t0 = time.monotonic()
        self.run_dir = Path(tempfile.mkdtemp(prefix="kanal-cp-"))
        self.certs = write_certs(self.run_dir / "pki")
        self._ssl = self._client_ssl()
        etcd_port, peer_port, api_port = free_ports(3)
        self.timings["certs"] = time.monotonic() - t0
        self._start_etcd(etcd_port, peer_port)
        self._start_apiserver(api_port)
        self._write_kubeconfig()
        self._start_controller_manager()
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.run_dir != Path() and not self.keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException as e:
            self.stop()
            if isinstance(e, StartupError) and not self.keep_run_dir:
                e.add_note(f"{self.run_dir} was removed; KANAL_KEEP_RUN_DIR=1 keeps it")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- components --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.run_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def _start_etcd(self, port: int, peer_port: int) -> None:
        self.etcd_url = f"http://127.0.0.1:{port}"
        peer = f"http://127.0.0.1:{peer_port}"
        proc = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=kanal",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kanal={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        self.timings["etcd"] = wait_until(healthy, proc, "healthy", self.startup_timeout)

    def _start_apiserver(self, port: int) -> None:
        c = self._certs()
        self.server = f"https://127.0.0.1:{port}"
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",  # else "no default routes found" offline
                "--endpoint-reconciler-type=none",  # else endless loopback-endpoint errors
                f"--secure-port={port}",
                f"--cert-dir={self.run_dir / 'apiserver'}",
                f"--tls-cert-file={c.server_cert}",
                f"--tls-private-key-file={c.server_key}",
                f"--client-ca-file={c.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={c.sa_key}",
                f"--service-account-signing-key-file={c.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",  # no token volumes: there are no pods
                "--profiling=false",
            ],
        )

        def ready() -> bool:
            status, body = self._request("GET", "/readyz")
            return status == 200 and body.strip() == b"ok"

        self.timings["kube-apiserver"] = wait_until(
            ready, proc, "ready (/readyz)", self.startup_timeout, interval=0.2
        )

    def _start_controller_manager(self) -> None:
        c = self._certs()
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={c.sa_key}",
                f"--root-ca-file={c.ca_cert}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--profiling=false",
            ],
        )
        # Cheap proof the controllers run: the garbage collector removes the dependent of a
        # deleted owner within a second. (A namespace probe would cost 5 s more: the namespace
        # controller waits a hard-coded 5 s grace period before it starts deleting.)
        cms = "/api/v1/namespaces/kube-system/configmaps"
        owner = self._create_configmap(cms, {"metadata": {"name": PROBE_OWNER}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": PROBE_OWNER, "uid": owner["uid"]}
        self._create_configmap(cms, {"metadata": {"name": PROBE_CHILD, "ownerReferences": [ref]}})
        status, text = self._request("DELETE", f"{cms}/{PROBE_OWNER}")
        if status not in (200, 202):
            raise StartupError(f"deleting probe owner: HTTP {status}: {text[:500]!r}")
        self.timings[proc.name] = wait_until(
            lambda: self._request("GET", f"{cms}/{PROBE_CHILD}")[0] == 404,
            proc,
            "collecting garbage (dependent of a deleted ConfigMap still there)",
            self.startup_timeout,
            interval=0.1,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _certs(self) -> CertFiles:
        if self.certs is None:
            raise RuntimeError("control plane not started")
        return self.certs

    def _client_ssl(self) -> ssl.SSLContext:
        c = self._certs()
        ctx = ssl.create_default_context(cafile=str(c.ca_cert))
        ctx.load_cert_chain(str(c.admin_cert), str(c.admin_key))
        return ctx

    def _request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        """One admin request to the API server; returns (status, body)."""
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=self._ssl, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _create_configmap(self, collection: str, obj: dict[str, object]) -> dict[str, str]:
        """POST a ConfigMap; returns its metadata."""
        body = {"apiVersion": "v1", "kind": "ConfigMap", **obj}
        status, text = self._request("POST", collection, body)
        if status != 201:
            raise StartupError(f"POST {collection}: HTTP {status}: {text[:500]!r}")
        meta: dict[str, str] = json.loads(text)["metadata"]
        return meta

    def _write_kubeconfig(self) -> None:
        c = self._certs()

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kanal-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(c.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(c.admin_cert),
                        "client-key-data": b64(c.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "kanal-test",
                    "context": {
                        "cluster": "kanal-test",
                        "user": "admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "kanal-test",
        }
        self.kubeconfig = self.run_dir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)
