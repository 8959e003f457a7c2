"""A watch-event load generator that writes ConfigMaps straight into etcd.

Writing through kube-apiserver tops out near 1k writes/s on a 2-core machine, far
below the watch-event rates the cache should keep up with. ``etcd_blast`` runs
``etcdload`` (testbed/kube/etcdload, built by testbed/build.sh), which puts complete
JSON ConfigMaps under the API server's etcd prefix; the real API server's watch path
then delivers them as ADDED/MODIFIED events to every watcher, informers included.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from testbed.cluster import ControlPlanes, ensure_binaries

_build_lock = threading.Lock()


def _etcdload() -> Path:
    """The etcdload binary, built by testbed/build.sh (one build at a time)."""
    with _build_lock:
        return ensure_binaries() / "etcdload"


def etcd_blast(
    planes: ControlPlanes,
    context: str,
    *,
    namespace: str,
    objects: int,
    rate: int,
    seconds: float,
    concurrency: int = 16,
    batch: int = 1,
) -> dict[str, float]:
    """Create the ConfigMaps ``etcdload-0`` .. ``etcdload-<objects-1>`` in ``namespace``
    of ``context`` where missing (untimed), then update them round-robin at ``rate``
    puts/s in total (0: as fast as possible) for ``seconds``.

    The writes bypass the API server's write path entirely: no authentication,
    admission, validation, defaulting or resourceVersion checks, and no write load on
    the API server. What a consumer of the resulting events measures is therefore the
    API server's watch fan-out (reading etcd's watch stream, decoding the stored JSON,
    sending it to watchers) plus the informer and the cache behind it, not what a
    cluster could accept as API writes. The namespace is created through the API (as
    the admin) if missing so that the objects live in a real namespace.

    ``batch`` > 1 puts that many updates of distinct objects in one etcd transaction
    (one revision, ``batch`` watch events): far less etcd and generator CPU per event,
    but the events share a resourceVersion, which API-server writes never produce.

    Returns etcdload's JSON line: ``puts``, ``txns``, ``batch``, ``errors``, ``seconds``,
    ``puts_per_s``, ``target_rate``, ``first_revision``, ``last_revision`` of the timed
    update phase (one MODIFIED event per put), and ``created`` (ADDED events), ``existing``,
    ``create_seconds``, ``create_first_revision``, ``create_last_revision`` of the
    untimed creation phase. Safe to call from several threads at once.
    """
    if planes.etcd is None:
        raise RuntimeError("control planes not started")
    admin = planes.servers[context].admin()
    if admin.get(f"/api/v1/namespaces/{namespace}") is None:
        try:
            admin.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        except RuntimeError as exc:  # created concurrently by another caller
            if "HTTP 409" not in str(exc):
                raise
    argv = [
        str(_etcdload()),
        f"-endpoint={planes.etcd.url}",
        f"-prefix=/registry-{context}",
        f"-namespace={namespace}",
        f"-objects={objects}",
        f"-rate={rate}",
        f"-seconds={seconds}",
        f"-concurrency={concurrency}",
        f"-batch={batch}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"etcdload failed ({result.returncode}): {result.stderr[-2000:]}")
    return {k: float(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
