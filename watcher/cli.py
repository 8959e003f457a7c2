"""Command line: ``k8s-watcher serve | stream | status | check | report | compat`` and the ``k8s-watcher-plugin`` entry
that CloudQuery's ``registry: local`` starts (``<path> serve --network unix ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher import __version__
from watcher.checks.commands import register as register_check_commands
from watcher.compat.commands import register as register_compat_commands
from watcher.timeline.commands import register as register_history_commands

if TYPE_CHECKING:
    from watcher.plugin import Plugin

log = logging.getLogger("watcher")


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, the shape the CloudQuery CLI re-logs from plugins."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": record.levelname.lower().replace("warning", "warn"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "module": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = {"trace": "debug", "warn": "warning"}.get(level, level)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # urllib3 logs every retry of every watch at WARNING; our informers log what matters.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- daemon


def _duration(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse ``type`` on the spec's duration parser (``90``, ``90s``, ``10m``, ``1h``)."""

    def parse(text: str) -> float:
        from watcher.spec import seconds

        try:
            return seconds(text, allow_zero=allow_zero)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "duration"  # argparse names the type in some messages
    return parse


#: A database URL carries a password: $K8S_WATCHER_CACHE_URL keeps it out of argv (ps).
_CACHE_URL: dict[str, Any] = {
    "default": os.environ.get("K8S_WATCHER_CACHE_URL"),
    "metavar": "URL",
    "help": "the cache as a database URL instead of --cache: postgresql://user@host/db (shared by "
    "replicas; password from the URL, $PGPASSWORD or ~/.pgpass) (default: $K8S_WATCHER_CACHE_URL)",
}


def _size(text: str) -> int:
    """``500MB``, ``1GiB``, ``2000000`` (bytes)."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "kib": 1 << 10,
        "mib": 1 << 20,
        "gib": 1 << 30,
    }
    number = text.strip().lower().rstrip("bikmg")
    unit = text.strip().lower()[len(number) :]
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 1GiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (must be more than 0)")
    return int(value)


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 200000)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (must be 0 or more)")
    return value


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _history_policy(args: argparse.Namespace) -> Any:
    from watcher.history import HistoryPolicy

    given: dict[str, Any] = {"enabled": not args.no_history, "status_updates": args.history_status_updates}
    for key, option in (
        ("off", "history_off"),
        ("on", "history_on"),
        ("retention_seconds", "history_retention"),
        ("max_bytes", "history_max_size"),
        ("backlog_max", "history_backlog"),
    ):
        if getattr(args, option) is not None:
            given[key] = getattr(args, option)
    return HistoryPolicy(**given)


def _serve(args: argparse.Namespace) -> int:
    from watcher.daemon import Daemon, DaemonConfig
    from watcher.errors import CacheError, ConfigError
    from watcher.kubeconfig import default_kubeconfig
    from watcher.spec import default_cache_path

    setup_logging(args.log_level, args.log_format)
    if args.in_cluster_context:
        # Read by watcher.kubeconfig wherever the kubeconfig is read, the plugin included.
        os.environ["K8S_WATCHER_IN_CLUSTER_CONTEXT"] = args.in_cluster_context
    # Options left out take DaemonConfig's defaults (written there, once).
    given = {
        key: getattr(args, key)
        for key in (
            "grpc_address",
            "http_address",
            "relist_interval",
            "tombstone_retention",
            "exec_timeout",
            "kubeconfig_check_interval",
            "replicas_lease_namespace",
            "replicas_lease_context",
            "replicas_group",
            "lease_duration",
        )
        if getattr(args, key) is not None
    }
    given.update(
        {
            key: Path(getattr(args, key))
            for key in ("grpc_tls_cert", "grpc_tls_key", "ready_file")
            if getattr(args, key)
        }
    )
    given["history"] = _history_policy(args)
    config = DaemonConfig(
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else default_kubeconfig(),
        contexts=args.contexts.split(",") if args.contexts else ["*"],
        cache_path=Path(args.cache) if args.cache else default_cache_path(),
        cache_url=args.cache_url or None,
        **given,
    )
    try:
        daemon = Daemon(config)
    except (ConfigError, CacheError) as exc:
        log.error("%s", exc)
        return 2
    daemon.run_forever()
    return 0


def _status(args: argparse.Namespace) -> int:
    from watcher import state
    from watcher.spec import default_cache_path

    path = args.cache_url or (Path(args.cache) if args.cache else default_cache_path())
    try:
        engine = state.open_reader(path)
    except state.CacheUnusable as exc:
        print(f"k8s-watcher: {exc}", file=sys.stderr)
        return 2
    with engine.connect() as conn:
        rows = state.read_checkpoints(conn)
        heartbeat = float(state.read_meta(conn, "daemon_heartbeat") or 0)
        counts = state.count_rows(conn)
        clusters = state.read_clusters(conn)
        retired = state.read_retired_contexts(conn)
        owners = {ctx: log.owner for ctx, log in state.read_context_logs(conn).items()}
        kubeconfig = {
            key: state.read_meta(conn, f"kubeconfig_{key}")
            for key in ("path", "generation", "loaded_at", "checked_at", "error")
        }
    now = time.time()
    progress = _progress(rows)
    stream = _stream_status(args.daemon) if args.daemon else None
    if args.json:
        print(
            json.dumps(
                {
                    "daemon_heartbeat_age": now - heartbeat if heartbeat else None,
                    "kubeconfig": kubeconfig,
                    "contexts": clusters,
                    "removed_contexts": retired,
                    "writers": owners,
                    "progress": progress,
                    "informers": rows,
                    "rows": counts,
                    **({"stream": stream} if stream is not None else {}),
                },
                default=str,
            )
        )
        return 0
    if stream is not None:
        print("follow syncs: " + ", ".join(f"{k} {v}" for k, v in stream.items()))
    alive = f"{now - heartbeat:.0f}s ago" if heartbeat else "never"
    print(f"cache {state.CacheLocation.of(path)}: {sum(counts.values())} objects; daemon heartbeat {alive}")
    _print_contexts(kubeconfig, clusters, retired, progress, now)
    print(
        f"{'CONTEXT':<20} {'RESOURCE':<45} {'STATE':<10} {'RV':<12} {'EVENTS':>8} {'LISTS':>6} {'RELISTS':>8} {'ERRORS':>7}  LAST ERROR"
    )
    for r in rows:
        print(
            f"{r['context']:<20} {r['resource']:<45} {r['state']:<10} {r['resource_version'] or '-'!s:<12} "
            f"{r['events']:>8} {r['lists']:>6} {r['relists']:>8} {r['errors']:>7}  {(r['last_error'] or '')[:80]}"
        )
    return 0


def _progress(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """context -> informer state -> how many (unserved resources left out): how far a
    (re)starting fleet is."""
    from watcher.state import InformerState, informer_state

    found: dict[str, dict[str, int]] = {}
    for r in rows:
        state = informer_state(r["state"])
        if state is not InformerState.UNSERVED:
            counts = found.setdefault(r["context"], {})
            counts[state] = counts.get(state, 0) + 1
    return found


def _describe_progress(counts: dict[str, int]) -> str:
    watching = counts.get("watching", 0)
    others = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != "watching")
    return f"{watching}/{sum(counts.values())} watching" + (f" ({others})" if others else "")


def _print_contexts(
    kubeconfig: dict[str, str | None],
    clusters: list[dict[str, Any]],
    retired: list[dict[str, Any]],
    progress: dict[str, dict[str, int]],
    now: float,
) -> None:
    """The contexts section of ``status``: the kubeconfig the daemon reads, each context's
    server, version and last error, and the contexts removed from the kubeconfig."""

    def ago(stamp: str | float | None) -> str:
        return f"{now - float(stamp):.0f}s ago" if stamp else "never"

    if kubeconfig["path"]:
        line = (
            f"kubeconfig {kubeconfig['path']}: generation {kubeconfig['generation']}, "
            f"loaded {ago(kubeconfig['loaded_at'])}, checked {ago(kubeconfig['checked_at'])}"
        )
        print(line + (f"; not reloaded: {kubeconfig['error']}" if kubeconfig["error"] else ""))
    print(f"{'CONTEXT':<20} {'SERVER':<40} {'VERSION':<14} {'INFORMERS':<32} LAST ERROR")
    for c in clusters:
        informers = _describe_progress(progress.get(c["context"], {}))
        print(
            f"{c['context']:<20} {c['server'] or '-':<40} {c['kubernetes_version'] or '-':<14} "
            f"{informers:<32} {(c['last_error'] or '')[:200]}"
        )
    for r in retired:
        print(
            f"{r['context']:<20} removed from the kubeconfig {ago(r['retired_at'])}; its objects are tombstoned"
        )
    print()


def _stream(args: argparse.Namespace) -> int:
    import signal
    import threading

    from watcher.stream import cloudquery_command, supervise

    setup_logging(args.log_level, "text")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    command = [args.cloudquery] if args.cloudquery else cloudquery_command()
    return supervise([*command, "sync", *args.config, *args.cli_args], stop)


def _stream_status(address: str) -> dict[str, str]:
    """The daemon's k8s_watcher_stream_* metrics (follow syncs: open, seq, lag, last error)."""
    import urllib.request

    url = address if "://" in address else f"http://{address}"
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return {"error": f"daemon metrics at {url} unreachable: {exc}"}
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("k8s_watcher_stream_"):
            name, _, value = line.rpartition(" ")
            found[name.removeprefix("k8s_watcher_stream_")] = value
    return found


#: ``k8s-watcher --help``: plain text (the module docstring is for readers of the code).
_DESCRIPTION = """\
A live inventory of Kubernetes clusters, kept by watches in a cache (a SQLite file or
a PostgreSQL database) and served to CloudQuery as a source plugin."""
_EXAMPLES = """\
examples:
  k8s-watcher serve                      watch every context of $KUBECONFIG
  k8s-watcher serve --contexts prod,dev --cache /var/lib/k8s-watcher/cache.db
  k8s-watcher status                     what the cache holds, per context and informer
  cloudquery sync examples/grpc-snapshot.yml
  k8s-watcher check --dsn postgresql://user@host/db

'k8s-watcher COMMAND --help' describes a command. Documentation: README.md and docs/."""


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with the same one-line summary the list shows."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="k8s-watcher",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"k8s-watcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _command(sub, "serve", "run the daemon: informers, the gRPC plugin server, /healthz and /metrics")
    serve.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    serve.add_argument("--contexts", help="comma-separated context names (default: all)")
    serve.add_argument("--cache", help="cache file (default: ~/.local/state/k8s-watcher/cache.db)")
    serve.add_argument("--cache-url", **_CACHE_URL)
    serve.add_argument(
        "--replicas-lease-namespace",
        metavar="NS",
        help="run as one of several replicas sharing a PostgreSQL cache (--cache-url): hold one "
        "coordination.k8s.io Lease per watched context in this namespace, contexts spread evenly "
        "over the live replicas",
    )
    serve.add_argument(
        "--replicas-lease-context",
        metavar="CONTEXT",
        help="kubeconfig context of the cluster the Leases live on (default: the pod's own cluster)",
    )
    serve.add_argument(
        "--replicas-group", metavar="NAME", help="replica groups sharing a namespace (default: default)"
    )
    serve.add_argument(
        "--lease-duration",
        type=_duration(allow_zero=False),
        metavar="DURATION",
        help="a replica that stops renewing loses its contexts after this long (default 15s)",
    )
    serve.add_argument(
        "--grpc-address",
        help="plugin server for registry: grpc (default 127.0.0.1:7777; port 0: any free port)",
    )
    serve.add_argument(
        "--http-address", help="/healthz and /metrics (default 127.0.0.1:9464; port 0: any free port)"
    )
    serve.add_argument(
        "--ready-file", metavar="FILE",
        help="once listening, write the gRPC and HTTP addresses here as JSON (the ports chosen for port 0)",
    )  # fmt: skip
    serve.add_argument(
        "--grpc-tls-cert", metavar="FILE", help="serve gRPC over TLS with this certificate (PEM)"
    )
    serve.add_argument("--grpc-tls-key", metavar="FILE", help="the private key of --grpc-tls-cert (PEM)")
    serve.add_argument(
        "--relist-interval", type=_duration(allow_zero=True), metavar="DURATION",
        help="time between safety-net relists of every informer, e.g. 1h (default 0: off)",
    )  # fmt: skip
    serve.add_argument(
        "--tombstone-retention", type=_duration(allow_zero=False), metavar="DURATION",
        help="keep deletions this long for incremental syncs; an older cursor gets a full snapshot (default 24h)",
    )  # fmt: skip
    serve.add_argument(
        "--in-cluster-context", metavar="NAME",
        help="with no kubeconfig, inside a pod: the name of the pod's own cluster context (default in-cluster)",
    )  # fmt: skip
    serve.add_argument(
        "--kubeconfig-check-interval", type=_duration(allow_zero=True), metavar="DURATION",
        help="how often to look for kubeconfig changes (default 30s; 0: only on SIGHUP)",
    )  # fmt: skip
    serve.add_argument(
        "--exec-timeout", type=_duration(allow_zero=False), metavar="DURATION",
        help="kill an exec credential plugin that runs longer than this (default 30s)",
    )  # fmt: skip
    serve.add_argument(
        "--no-history", action="store_true",
        help="keep no history of changes (k8s_object_changes, k8s_object_lifetimes stay empty)",
    )  # fmt: skip
    serve.add_argument(
        "--history-off", type=_patterns, metavar="KINDS",
        help="comma-separated kinds without history (plural, kind, resource or table name; * globs) "
        "(default: events,leases,endpoints,endpointslices)",
    )  # fmt: skip
    serve.add_argument(
        "--history-on", type=_patterns, metavar="KINDS", help="kinds with history even if --history-off names them"
    )  # fmt: skip
    serve.add_argument(
        "--history-status-updates", action="store_true",
        help="also record changes that touch only an object's status (a pod's phase, a node's conditions)",
    )  # fmt: skip
    serve.add_argument(
        "--history-retention", type=_duration(allow_zero=False), metavar="DURATION",
        help="purge recorded changes from the cache after this long (default 24h; the destination keeps them)",
    )  # fmt: skip
    serve.add_argument(
        "--history-max-size", type=_size, metavar="SIZE",
        help="purge the oldest changes beyond this size in the cache (default 1GiB)",
    )  # fmt: skip
    serve.add_argument(
        "--history-backlog", type=_count, metavar="VERSIONS",
        help="versions logged for the history but not yet turned into change rows, at most, before the "
        "writer derives them however busy (default 200000)",
    )  # fmt: skip
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.set_defaults(func=_serve)
    stream = sub.add_parser(
        "stream",
        help="keep a follow sync running: cloudquery sync CONFIG, restarted with backoff when it exits",
    )
    stream.add_argument(
        "--config", action="append", required=True, help="CloudQuery config file (repeatable)"
    )
    stream.add_argument(
        "--cloudquery", help="the CLI (default: cloudquery on PATH, else python -m cloudquery)"
    )
    stream.add_argument("--log-level", default="info")
    stream.add_argument("cli_args", nargs="*", help="more CLI arguments, after --")
    stream.set_defaults(func=_stream)
    status = _command(
        sub, "status", "print each context's and informer's state from the cache (file or database)"
    )
    status.add_argument("--cache", help="cache file (default: ~/.local/state/k8s-watcher/cache.db)")
    status.add_argument("--cache-url", **_CACHE_URL)
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--daemon", metavar="HOST:PORT", help="also show the daemon's follow syncs (its /metrics address)"
    )
    status.set_defaults(func=_status)
    register_check_commands(sub)  # check, report
    register_compat_commands(sub)  # compat install
    register_history_commands(sub)  # history install
    args = parser.parse_args(argv)
    return int(args.func(args))


# --------------------------------------------------------------------------- registry: local


def plugin_main(argv: list[str] | None = None) -> int:
    """What ``registry: local`` runs: ``serve --network unix --address PATH ...``."""
    parser = argparse.ArgumentParser(
        prog="k8s-watcher-plugin",
        description="The k8s-watcher source plugin as CloudQuery's registry: local starts it. "
        "Without a daemon keeping the cache warm, it lists what is cold or stale first.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _command(sub, "serve", "serve the plugin (protocol v3) until SIGINT or SIGTERM")
    serve.add_argument(
        "--address", default="127.0.0.1:7777", help="host:port, or a socket path (default %(default)s)"
    )
    serve.add_argument("--network", default="tcp", choices=["tcp", "unix"], help="(default %(default)s)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.add_argument("--no-sentry", action="store_true")
    serve.add_argument("--license", default="")
    serve.add_argument("--otel-endpoint", default="")
    serve.add_argument("--otel-endpoint-insecure", default="")
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)

    from watcher.server import serve_plugin, serve_until_signalled

    # Listen first, build the plugin beside it: the CLI gives a local plugin 5 s to accept
    # its connection (plugin-pb-go's connectToUnixSocket, three tries), and importing the
    # cache, SQLAlchemy and the relist path is most of a second on a quiet machine and
    # several on a loaded one; the calls wait for the plugin instead.
    plugin = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugin-build").submit(_local_plugin)
    serve_until_signalled(serve_plugin(plugin, args.address, network=args.network))
    return 0


def _local_plugin() -> Plugin:
    try:
        from watcher.plugin import Plugin
        from watcher.refresh import Relister

        return Plugin(Relister())
    except Exception:
        log.exception("the plugin could not be built: every call will fail")
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
