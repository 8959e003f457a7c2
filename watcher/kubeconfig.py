"""The kubeconfig file: which contexts it defines and what each entry says.

Plain YAML reading, no Kubernetes client: the plugin resolves contexts with it
without importing the client that talks to the API servers (``watcher.kube``).

In a pod with no kubeconfig (the default path missing, ``KUBERNETES_SERVICE_HOST``
and ``KUBERNETES_SERVICE_PORT`` set, the service-account token and CA mounted), the
kubeconfig is the pod's identity: one context (``in-cluster``, or
``$K8S_WATCHER_IN_CLUSTER_CONTEXT``) whose user reads the token file, so a rotated
token is picked up like any ``tokenFile``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watcher.errors import ConfigError


class KubeconfigError(ConfigError):
    """The kubeconfig is missing, unreadable, malformed, or lacks a context."""


def default_kubeconfig() -> Path:
    env = os.environ.get("KUBECONFIG")
    return Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"


#: Where Kubernetes mounts a pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def service_account_dir() -> Path:
    """The mounted service-account directory (``$K8S_WATCHER_SERVICE_ACCOUNT_DIR`` overrides it)."""
    return Path(os.environ.get("K8S_WATCHER_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)


def in_cluster_context_name() -> str:
    return os.environ.get("K8S_WATCHER_IN_CLUSTER_CONTEXT") or "in-cluster"


def in_cluster_config() -> dict[str, Any] | None:
    """The pod's own identity as a kubeconfig, or None when not running in a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    sa = service_account_dir()
    token, ca = sa / "token", sa / "ca.crt"
    if not (host and port and token.is_file() and ca.is_file()):
        return None
    name = in_cluster_context_name()
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    context: dict[str, Any] = {"cluster": name, "user": name}
    with contextlib.suppress(OSError):
        context["namespace"] = (sa / "namespace").read_text().strip() or None
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


def read_kubeconfig(path: Path) -> dict[str, Any]:
    """The kubeconfig at ``path``; in a pod, the pod's identity when ``path`` is the
    default one and does not exist (as client-go's loader falls back to in-cluster)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        if Path(path) == default_kubeconfig():
            config = in_cluster_config()
            if config is not None:
                return config
            raise KubeconfigError(
                f"kubeconfig {path} does not exist (and this is not a pod with a service account: "
                "KUBERNETES_SERVICE_HOST unset or no token mounted)"
            ) from exc
        raise KubeconfigError(f"kubeconfig {path} does not exist") from exc
    except OSError as exc:
        raise KubeconfigError(f"kubeconfig {path} cannot be read: {exc.strerror}") from exc
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("contexts") or [], list):
        raise KubeconfigError(f"kubeconfig {path} is malformed: expected a mapping with a 'contexts' list")
    return config


def context_names(path: Path) -> list[str]:
    """The context names the kubeconfig defines, in file order."""
    config = read_kubeconfig(path)
    return [str(c["name"]) for c in config.get("contexts") or [] if isinstance(c, dict) and "name" in c]


def resolve_contexts(path: Path, wanted: list[str]) -> list[str]:
    """Expand ``"*"`` and check every named context exists."""
    available = context_names(path)
    if "*" in wanted:
        return available
    missing = [c for c in wanted if c not in available]
    if missing:
        raise KubeconfigError(
            f"context(s) {', '.join(missing)} not found in kubeconfig {path} "
            f"(available: {', '.join(available) or 'none'})"
        )
    return list(wanted)


def named(config: dict[str, Any], section: str, name: Any) -> dict[str, Any] | None:
    """The body of the entry called ``name`` in a kubeconfig list (``contexts``,
    ``clusters``, ``users``): ``{"name": n, "context": {...}}`` -> ``{...}``."""
    body_key = section[:-1]
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(body_key) or {}
    return None


@dataclass(frozen=True)
class ContextEntry:
    """One context with its cluster and user entries, as the kubeconfig says them.

    ``base_dir`` is the kubeconfig's directory: relative file names in the entries
    (certificates, keys, token files, an exec command with a slash) are relative to it.
    """

    name: str
    cluster_name: str | None
    cluster: dict[str, Any]
    user: dict[str, Any]
    namespace: str | None
    base_dir: Path

    def path(self, value: str) -> Path:
        """A file name from the entries, resolved against the kubeconfig's directory."""
        return self.base_dir / Path(value).expanduser()

    @property
    def fingerprint(self) -> str:
        """Changes exactly when what the client would be built from changes."""
        body = [self.cluster_name, self.cluster, self.user, self.namespace, str(self.base_dir)]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def context_entries(path: Path) -> dict[str, ContextEntry]:
    """Every context of the kubeconfig with its cluster and user, in file order."""
    return entries_of(read_kubeconfig(path), Path(path).expanduser().absolute().parent)


def entries_of(config: dict[str, Any], base_dir: Path) -> dict[str, ContextEntry]:
    """Every context of a kubeconfig document (file names relative to ``base_dir``)."""
    entries: dict[str, ContextEntry] = {}
    for name in (str(c["name"]) for c in config.get("contexts") or [] if isinstance(c, dict) and "name" in c):
        ctx = named(config, "contexts", name) or {}
        entries[name] = ContextEntry(
            name=name,
            cluster_name=ctx.get("cluster"),
            cluster=named(config, "clusters", ctx.get("cluster")) or {},
            user=named(config, "users", ctx.get("user")) or {},
            namespace=ctx.get("namespace"),
            base_dir=base_dir,
        )
    return entries


def context_entry(path: Path, context: str) -> ContextEntry:
    entry = context_entries(path).get(context)
    if entry is None:
        raise KubeconfigError(f"context {context} not found in kubeconfig {path}")
    return entry
