"""Real local control planes for tests, benchmarks and the demo.

One etcd and N kube-apiservers on loopback, each API server under its own etcd
prefix, TLS with a throwaway CA, token authentication, RBAC on, and a kubeconfig
with one context per API server plus a non-admin ``<name>-viewer`` user that may
read everything except secrets. Every process started here is stopped by
:meth:`ControlPlanes.stop`, which the context manager calls also on failure.

Binaries come from ``testbed/build.sh`` (see ``binary_dir``).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed.proxy import TcpProxy

KUBE_VERSION = "v1.37.2"
REPO = Path(__file__).resolve().parent.parent


#: A custom resource schema that accepts anything (what most test CRDs need).
ANY_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def crd_manifest(
    group: str,
    plural: str,
    schema: dict[str, Any] | None = None,
    printer_columns: list[dict[str, Any]] | None = None,
    *,
    kind: str | None = None,
) -> dict[str, Any]:
    """A namespaced CustomResourceDefinition serving and storing ``v1`` of ``plural``
    (kind: ``plural`` capitalised unless given)."""
    kind = kind or plural.capitalize()
    version: dict[str, Any] = {
        "name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema or ANY_OBJECT},
    }  # fmt: skip
    if printer_columns:
        version["additionalPrinterColumns"] = printer_columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind, "listKind": f"{kind}List"},
            "versions": [version],
        },
    }


def binary_dir() -> Path:
    """Where ``testbed/build.sh`` puts kube-apiserver and etcd (kept in sync with it)."""
    env = os.environ.get("K8S_WATCHER_TESTBED_BIN")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "k8s-watcher" / "testbed" / "bin"


def ensure_binaries() -> Path:
    """Build (or confirm cached) kube-apiserver and etcd; return their directory."""
    subprocess.run([str(REPO / "testbed" / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    return binary_dir()


#: Ports :func:`free_port` handed out: never handed out twice by one process.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
#: Starts of a process whose port was taken before it could bind it.
BIND_ATTEMPTS = 5


def free_port() -> int:
    """A loopback port that was free a moment ago, for a process that cannot bind port 0
    itself and report the port it got (etcd, kube-apiserver, PostgreSQL). No two calls
    in this process return the same port; another process may still take it before it
    is bound, so whoever starts the process retries on :func:`bind_failed`."""
    with _handed_out_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def bind_failed(log_text: str) -> bool:
    """Whether a process's log says it could not bind its port (taken meanwhile)."""
    return "address already in use" in log_text.lower()


class ProcessExited(RuntimeError):
    """A process we wait for died: waiting longer cannot help."""


def _wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except ProcessExited:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s (last error: {last!r})")


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    sa_key_file: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8s-watcher-testbed-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        pkcs8 = serialization.PrivateFormat.PKCS8
        nokey = serialization.NoEncryption()
        pki = cls(
            ca_file=directory / "ca.crt",
            cert_file=directory / "apiserver.crt",
            key_file=directory / "apiserver.key",
            sa_key_file=directory / "sa.key",
        )
        pki.ca_file.write_bytes(ca.public_bytes(pem))
        pki.cert_file.write_bytes(cert.public_bytes(pem))
        pki.key_file.write_bytes(key.private_bytes(pem, pkcs8, nokey))
        sa_key = ec.generate_private_key(ec.SECP256R1())
        # kube-apiserver reads the public half from the same file: PEM "EC PRIVATE KEY" only.
        pki.sa_key_file.write_bytes(
            sa_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, nokey)
        )
        for path in (pki.key_file, pki.sa_key_file):
            path.chmod(0o600)
        return pki


# --------------------------------------------------------------------------- processes


class _Process:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Etcd:
    """One etcd member on loopback; backs every API server under its own prefix."""

    def __init__(self, workdir: Path, bindir: Path) -> None:
        self.workdir, self.bindir = workdir, bindir
        self._take_ports()

    def _take_ports(self) -> None:
        workdir, bindir = self.workdir, self.bindir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = _Process(
            "etcd",
            [
                str(bindir / "etcd"),
                "--name=testbed",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
            workdir / "etcd.log",
        )

    def start(self) -> None:
        """Start, on other ports if one was taken before etcd could bind it."""
        for attempt in range(BIND_ATTEMPTS):
            self.process.start()
            try:
                _wait_for(self._ready, timeout=30, what="etcd")
                return
            except ProcessExited:
                if attempt == BIND_ATTEMPTS - 1 or not bind_failed(self.process.log_tail()):
                    raise
                self._take_ports()

    def _ready(self) -> bool:
        if not self.process.alive():
            raise ProcessExited(f"etcd exited:\n{self.process.log_tail()}")
        # A short timeout: whoever took the port may accept and never answer.
        return bool(self._post("/v3/maintenance/status", {}, timeout=2))

    def _post(self, path: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def revision(self) -> int:
        return int(self._post("/v3/maintenance/status", {})["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd to its current revision: every older watch RV becomes a real 410."""
        rev = self.revision()
        self._post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev


@dataclass
class ApiServer:
    """One kube-apiserver process; ``port`` stays the same across restarts."""

    name: str
    port: int
    process: _Process
    admin_token: str
    viewer_token: str
    ca_file: Path
    proxy: TcpProxy | None = None
    audit_log: Path | None = None
    token_file: Path | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """The URL the kubeconfig names: through the proxy when there is one."""
        return self.proxy.url if self.proxy else self.url

    def start(self) -> None:
        self.process.start()
        self.wait_ready()

    def stop(self) -> None:
        self.process.stop()

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if not self.process.alive():
                raise ProcessExited(f"kube-apiserver {self.name} exited:\n{self.process.log_tail()}")
            return self.admin().request("GET", "/readyz", timeout=5) is not None

        _wait_for(ready, timeout=timeout, what=f"kube-apiserver {self.name}", interval=0.5)

    def wait_first_ready(self) -> None:
        """:meth:`wait_ready` after the first start, which moves to another port (the
        proxy with it) when the port was taken before kube-apiserver could bind it."""
        for attempt in range(BIND_ATTEMPTS):
            try:
                self.wait_ready()
                return
            except ProcessExited:
                if attempt == BIND_ATTEMPTS - 1 or not bind_failed(self.process.log_tail()):
                    raise
            self.port = free_port()
            flag = "--secure-port="
            self.process.argv = [f"{flag}{self.port}" if a.startswith(flag) else a for a in self.process.argv]
            if self.proxy is not None:
                self.proxy.target = ("127.0.0.1", self.port)
            self.process.start()

    def admin(self) -> KubeHttp:
        return KubeHttp(self.url, self.admin_token, self.ca_file)

    def restart_with_tokens(self, extra: dict[str, str]) -> None:
        """Restart with a token file of the admin, the viewer and ``extra`` (token ->
        user, each in system:masters) and nothing else: tokens not named stop working."""
        assert self.token_file is not None
        write_token_file(self.token_file, self.admin_token, self.viewer_token, extra)
        self.stop()
        self.start()

    def audit_events(self) -> list[dict[str, Any]]:
        """Audit events written so far (level Metadata, one JSON object a line)."""
        if self.audit_log is None or not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out


class KubeHttp:
    """A minimal JSON client for test set-up (creating objects as the admin)."""

    def __init__(self, base_url: str, token: str, ca_file: Path) -> None:
        self.base_url = base_url
        self.token = token
        self.ctx = ssl.create_default_context(cafile=str(ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float = 30,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ctx) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method in ("GET", "DELETE"):
                return None
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {"raw": raw.decode(errors="replace")}

    def get(self, path: str) -> dict[str, Any] | None:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        result = self.request("POST", path, obj)
        assert result is not None
        return result

    def apply(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace when it exists (PUT with the current resourceVersion)."""
        name = obj["metadata"]["name"]
        current = self.get(f"{path}/{name}")
        if current is None:
            return self.create(path, obj)
        obj = {
            **obj,
            "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        result = self.request("PUT", f"{path}/{name}", obj)
        assert result is not None
        return result

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        result = self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        assert result is not None
        return result

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def list(self, path: str) -> dict[str, Any]:
        """A consistent LIST (resourceVersion unset: read from etcd, not the watch cache)."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            sep = "&" if "?" in path else "?"
            page = self.get(f"{path}{sep}limit=500" + (f"&continue={cont}" if cont else ""))
            assert page is not None
            items.extend(page.get("items") or [])
            cont = page["metadata"].get("continue") or ""
            if not cont:
                page["items"] = items
                return page


# --------------------------------------------------------------------------- the set

_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # ResponseStarted is kept: a watch is only logged at that stage until it ends.
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}

_VIEWER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "testbed-viewer"},
    "rules": [
        {
            # Everything in the core group except secrets.
            "apiGroups": [""],
            "resources": [
                "namespaces",
                "pods",
                "services",
                "configmaps",
                "nodes",
                "serviceaccounts",
                "persistentvolumes",
                "persistentvolumeclaims",
                "events",
                "endpoints",
                "limitranges",
                "resourcequotas",
                "podtemplates",
                "replicationcontrollers",
                "componentstatuses",
            ],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": [
                "apps",
                "batch",
                "rbac.authorization.k8s.io",
                "storage.k8s.io",
                "networking.k8s.io",
                "discovery.k8s.io",
                "events.k8s.io",
                "autoscaling",
                "policy",
                "coordination.k8s.io",
                "apiextensions.k8s.io",
                "admissionregistration.k8s.io",
                "certificates.k8s.io",
                "node.k8s.io",
                "scheduling.k8s.io",
                "apiregistration.k8s.io",
                "flowcontrol.apiserver.k8s.io",
                "resource.k8s.io",
                "storagemigration.k8s.io",
                "example.com",
                "testbed.k8s-watcher.io",
            ],
            "resources": ["*"],
            "verbs": ["get", "list", "watch"],
        },
    ],
}


def write_token_file(path: Path, admin_token: str, viewer_token: str, extra: dict[str, str]) -> None:
    """kube-apiserver's --token-auth-file: the admin, the viewer, and ``extra`` (token ->
    user, in system:masters)."""
    lines = [f'{admin_token},admin,admin-uid,"system:masters"', f"{viewer_token},viewer,viewer-uid"]
    lines += [f'{token},{user},{user}-uid,"system:masters"' for token, user in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@dataclass
class ControlPlanes:
    """One etcd plus one API server per context name, and the kubeconfig naming them."""

    workdir: Path
    names: list[str]
    with_proxy: bool = False
    servers: dict[str, ApiServer] = field(default_factory=dict)
    etcd: Etcd | None = None
    kubeconfig: Path | None = None
    watch_cache_sizes: str = "configmaps#0"
    #: More kube-apiserver flags (e.g. ``--client-ca-file=...``).
    apiserver_args: tuple[str, ...] = ()
    #: The audit log (level Metadata, blocking) some tests read; a benchmark of a busy
    #: cluster turns it off so that kube-apiserver's CPU is its own work, not the log's.
    audit: bool = True
    #: The CA and service-account key (the live test bed's controller manager signs with it).
    pki: Pki | None = None

    def start(self) -> ControlPlanes:
        bindir = ensure_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.pki = Pki.create(self.workdir / "pki")
        self.etcd = Etcd(self.workdir, bindir)
        self.etcd.start()
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        for name in self.names:
            self.servers[name] = self._make_server(name, bindir, pki, policy)
        for server in self.servers.values():
            server.process.start()
        for server in self.servers.values():
            server.wait_first_ready()
            server.admin().apply("/apis/rbac.authorization.k8s.io/v1/clusterroles", _VIEWER_ROLE)
            server.admin().apply(
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "testbed-viewer"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "testbed-viewer",
                    },
                    "subjects": [{"kind": "User", "name": "viewer", "apiGroup": "rbac.authorization.k8s.io"}],
                },
            )
        self.kubeconfig = self.write_kubeconfig(self.workdir / "kubeconfig")
        return self

    def _make_server(self, name: str, bindir: Path, pki: Pki, policy: Path) -> ApiServer:
        assert self.etcd is not None
        port = free_port()
        admin_token = base64.b32encode(os.urandom(15)).decode().lower()
        viewer_token = base64.b32encode(os.urandom(15)).decode().lower()
        tokens = self.workdir / f"{name}-tokens.csv"
        write_token_file(tokens, admin_token, viewer_token, {})
        audit_log = self.workdir / f"{name}-audit.log"
        argv = [
            str(bindir / "kube-apiserver"),
            f"--etcd-servers={self.etcd.url}",
            f"--etcd-prefix=/registry-{name}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / f'{name}-certs'}",
            f"--tls-cert-file={pki.cert_file}",
            f"--tls-private-key-file={pki.key_file}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki.sa_key_file}",
            f"--service-account-signing-key-file={pki.sa_key_file}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            # As kubeadm sets it: privileged containers are admitted (the hardening checks
            # must meet some), and nothing else here would run them.
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            # Compaction only on demand (Etcd.compact), so tests decide when RVs expire.
            "--etcd-compaction-interval=0",
            # No watch cache for configmaps: their watches read etcd directly, so a compaction
            # gives a real 410 and their LIST cannot be streamed (exercising the LIST fallback).
            f"--watch-cache-sizes={self.watch_cache_sizes}",
            *(
                [
                    f"--audit-policy-file={policy}",
                    f"--audit-log-path={audit_log}",
                    "--audit-log-mode=blocking",
                ]
                if self.audit
                else []
            ),
            "--profiling=false",
            "--v=1",
            *self.apiserver_args,
        ]
        proxy = TcpProxy(target_port=port) if self.with_proxy else None
        if proxy:
            proxy.start()
        return ApiServer(
            name=name,
            port=port,
            process=_Process(f"kube-apiserver-{name}", argv, self.workdir / f"{name}-apiserver.log"),
            admin_token=admin_token,
            viewer_token=viewer_token,
            ca_file=pki.ca_file,
            proxy=proxy,
            audit_log=audit_log,
            token_file=tokens,
        )

    def write_kubeconfig(self, path: Path) -> Path:
        clusters, users, contexts = [], [], []
        for name, server in self.servers.items():
            clusters.append(
                {
                    "name": name,
                    "cluster": {"server": server.client_url, "certificate-authority": str(server.ca_file)},
                }
            )
            users.append({"name": f"{name}-admin", "user": {"token": server.admin_token}})
            users.append({"name": f"{name}-viewer", "user": {"token": server.viewer_token}})
            contexts.append({"name": name, "context": {"cluster": name, "user": f"{name}-admin"}})
            contexts.append(
                {"name": f"{name}-viewer", "context": {"cluster": name, "user": f"{name}-viewer"}}
            )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": clusters,
            "users": users,
            "contexts": contexts,
            "current-context": self.names[0],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
            if server.proxy:
                server.proxy.stop()
        if self.etcd:
            self.etcd.process.stop()


@contextmanager
def control_planes(
    names: list[str],
    *,
    workdir: Path | None = None,
    with_proxy: bool = False,
    apiserver_args: tuple[str, ...] = (),
    audit: bool = True,
) -> Iterator[ControlPlanes]:
    """Start etcd and one API server per name; stop them all on exit, error or not."""
    tmp = Path(tempfile.mkdtemp(prefix="k8s-watcher-testbed-")) if workdir is None else workdir
    planes = ControlPlanes(
        workdir=tmp, names=names, with_proxy=with_proxy, apiserver_args=apiserver_args, audit=audit
    )
    try:
        planes.start()
        yield planes
    finally:
        planes.stop()
        if workdir is None and not os.environ.get("K8S_WATCHER_KEEP_TESTBED"):
            shutil.rmtree(tmp, ignore_errors=True)
