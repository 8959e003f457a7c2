"""Kubeconfig contexts to API clients, and raw JSON requests.

The ``kubernetes`` package loads the kubeconfig (TLS material, tokens, exec and
auth-provider plugins); requests go through urllib3 directly with the response
left unparsed until :mod:`orjson` reads it. No model objects are built: they are
slow, memory-hungry and would hold secret data we never asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.kube_config import load_kube_config

from watcher import __version__
from watcher.kubeconfig import KubeconfigError, named, read_kubeconfig

log = logging.getLogger(__name__)

JSON = "application/json"
#: Ask for metadata only: the API server strips the body before it leaves the server.
PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
PARTIAL_OBJECT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """An API request failed. ``status`` is the HTTP code, 0 for transport errors.

    What a caller does about it is decided by the predicates below (as client-go's
    ``apierrors.IsForbidden`` and friends), never by comparing status numbers.
    """

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def is_transport(exc: ApiError) -> bool:
    """No HTTP answer: connection refused, reset, timed out, TLS failure."""
    return exc.status == 0


def is_forbidden(exc: ApiError) -> bool:
    """401 or 403: the credentials are rejected or may not do this; retrying soon won't help."""
    return exc.status in (401, 403)


def is_not_found(exc: ApiError) -> bool:
    """404: the resource is not served (a CRD that is gone, an API group not installed)."""
    return exc.status == 404


def is_expired(exc: ApiError) -> bool:
    """410 Gone: the resourceVersion or continue token is older than the server keeps."""
    return exc.status == 410


def is_too_many_requests(exc: ApiError) -> bool:
    """429: the server sheds load (priority and fairness); back off and retry."""
    return exc.status == 429


def is_server_error(exc: ApiError) -> bool:
    return exc.status >= 500


def is_retryable(exc: ApiError) -> bool:
    """Worth retrying unchanged after a backoff: no answer, 429, or a server error."""
    return is_transport(exc) or is_too_many_requests(exc) or is_server_error(exc)


def is_unsupported_request(exc: ApiError) -> bool:
    """400, 422 or 501: the server does not understand the request (e.g. a streaming list
    on a server without the WatchList feature)."""
    return exc.status in (400, 422, 501)


@dataclass(frozen=True)
class ClusterInfo:
    """What the kubeconfig says about a context (the k8s_clusters columns it feeds)."""

    context: str
    cluster_name: str | None
    server: str
    ca_file: str | None
    insecure_skip_verify: bool
    namespace: str | None


class KubeClient:
    """Raw JSON access to one context's API server."""

    def __init__(self, kubeconfig: Path, context: str) -> None:
        config = read_kubeconfig(kubeconfig)
        ctx = named(config, "contexts", context)
        if ctx is None:
            raise KubeconfigError(f"context {context} not found in kubeconfig {kubeconfig}")
        cluster = named(config, "clusters", ctx.get("cluster")) or {}
        self.configuration = Configuration()
        try:
            load_kube_config(
                config_file=str(kubeconfig),
                context=context,
                client_configuration=self.configuration,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError) as exc:
            raise KubeconfigError(f"context {context} in kubeconfig {kubeconfig}: {exc}") from exc
        self.context = context
        user = named(config, "users", ctx.get("user")) or {}
        # A projected service-account token (in-cluster) is rotated on disk about hourly;
        # the kubernetes client reads tokenFile once, so we re-read it when it changes.
        self._token_file = Path(user["tokenFile"]) if user.get("tokenFile") else None
        self._token_cache: tuple[float, str] = (0.0, "")
        self.info = ClusterInfo(
            context=context,
            cluster_name=ctx.get("cluster"),
            server=self.configuration.host,
            ca_file=cluster.get("certificate-authority"),
            insecure_skip_verify=bool(cluster.get("insecure-skip-tls-verify")),
            namespace=ctx.get("namespace"),
        )
        c = self.configuration
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=64,
            cert_reqs="CERT_REQUIRED" if c.verify_ssl else "CERT_NONE",
            ca_certs=c.ssl_ca_cert,
            cert_file=c.cert_file,
            key_file=c.key_file,
            retries=False,
        )
        if not c.verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": f"k8s-watcher/{__version__}"}
        token = (
            self._file_token()
            if self._token_file
            else self.configuration.get_api_key_with_prefix("BearerToken")
        )
        if token:
            headers["Authorization"] = token
        return headers

    def _file_token(self) -> str:
        assert self._token_file is not None
        try:
            mtime = self._token_file.stat().st_mtime
        except OSError as exc:
            raise ApiError(0, "token file unreadable", f"{self._token_file}: {exc.strerror}") from exc
        if mtime != self._token_cache[0]:
            self._token_cache = (mtime, "Bearer " + self._token_file.read_text().strip())
        return self._token_cache[1]

    def _open(self, path: str, query: Mapping[str, Any], *, accept: str, timeout: urllib3.Timeout) -> Any:
        url = self.configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        try:
            resp = self._pool.request(
                "GET", url, headers=self._headers(accept), timeout=timeout, preload_content=False
            )
        except urllib3.exceptions.SSLError as exc:
            raise ApiError(0, "TLS error", str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "connection error", str(exc)) from exc
        if resp.status >= 400:
            body = resp.read()
            resp.release_conn()
            message = ""
            try:
                message = str(orjson.loads(body).get("message", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message = body[:200].decode(errors="replace")
            raise ApiError(resp.status, resp.reason or "", message)
        return resp

    def get(
        self, path: str, query: Mapping[str, Any] | None = None, *, accept: str = JSON, timeout: float = 60
    ) -> Any:
        """One GET, parsed. Transport errors and HTTP >= 400 raise :class:`ApiError`."""
        resp = self._open(path, query or {}, accept=accept, timeout=urllib3.Timeout(connect=10, read=timeout))
        try:
            return orjson.loads(resp.read())
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "connection error", str(exc)) from exc
        finally:
            resp.release_conn()

    def stream(
        self, path: str, query: Mapping[str, Any], *, accept: str = JSON, read_timeout: float
    ) -> WatchStream:
        """Open a watch; HTTP errors raise here, events come from the returned stream.

        ``read_timeout`` bounds each socket read, so a connection that died silently
        (no FIN, no RST) is noticed instead of hanging forever.
        """
        resp = self._open(path, query, accept=accept, timeout=urllib3.Timeout(connect=10, read=read_timeout))
        return WatchStream(resp)

    def close(self) -> None:
        self._pool.clear()


class WatchStream:
    """The events of one watch response. Iterating yields the events of each network
    read as a list, so a burst is applied to the cache in one transaction.
    :meth:`close` may be called from another thread to interrupt a blocked read."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.closed = False

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        buffer = b""
        try:
            for chunk in self._resp.stream(1 << 16, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                events = [orjson.loads(line) for line in lines if line.strip()]
                if events:
                    yield events
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if not self.closed:
                raise ApiError(0, "watch connection broken", str(exc)) from exc
        finally:
            self._resp.release_conn()

    def close(self) -> None:
        self.closed = True
        # shutdown() interrupts a read blocked in another thread; it raises ValueError
        # when the response has no socket yet (or any more): nothing to interrupt then.
        with contextlib.suppress(OSError, ValueError):
            self._resp.shutdown()


def probe_contexts(kubeconfig: Path, contexts: list[str]) -> list[str]:
    """One line per context whose API server does not answer ``/version`` (what
    ``cloudquery test-connection`` reports)."""
    problems = []
    for ctx in contexts:
        try:
            client = KubeClient(kubeconfig, ctx)
            try:
                client.get("/version", timeout=10)
            finally:
                client.close()
        except (ApiError, KubeconfigError) as exc:
            problems.append(f"{ctx}: {exc}")
    return problems
