"""The kubeconfig file: which contexts it defines and what each entry says.

Plain YAML reading, no Kubernetes client: the plugin resolves contexts with it
without importing the client that talks to the API servers (``watcher.kube``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from watcher.errors import ConfigError


class KubeconfigError(ConfigError):
    """The kubeconfig is missing, unreadable, malformed, or lacks a context."""


def default_kubeconfig() -> Path:
    env = os.environ.get("KUBECONFIG")
    return Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"


def read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
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
