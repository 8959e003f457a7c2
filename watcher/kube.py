"""Kubeconfig contexts to API clients, and raw JSON requests.

A context's kubeconfig entries (``watcher.kubeconfig``) give the server, its TLS
settings and the user's credential sources (``watcher.credentials``); requests go
through urllib3 directly with the response left unparsed until :mod:`orjson` reads
it. No model objects are built: they are slow, memory-hungry and would hold secret
data we never asked for.

Credentials are consulted on every request: an expired exec or OIDC token is fetched
again, a rotated token or certificate file is read again, and a 401 refreshes the
credential and retries the request once. A new client certificate builds a new
connection pool; connections already open (running watches) keep theirs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import urllib3

from watcher import __version__
from watcher.credentials import DEFAULT_EXEC_TIMEOUT, ClientCert, CredentialError, Credentials
from watcher.kubeconfig import ContextEntry, KubeconfigError, context_entry

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

    def __init__(self, status: int, reason: str, message: str = "", *, status_reason: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        #: The ``reason`` of the Status body (``AlreadyExists``, ``Conflict``, ...): what
        #: the server means, where ``reason`` is only the HTTP reason phrase.
        self.status_reason = status_reason


class CredentialsUnavailable(ApiError):
    """No request was sent: the context's credentials could not be obtained (an exec
    plugin missing, failing, hanging or printing garbage; an unreadable file; an OIDC
    refresh refused)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "credentials unavailable", message)


def is_credentials_unavailable(exc: ApiError) -> bool:
    """The credentials could not be obtained; retried with backoff, not a server fault."""
    return isinstance(exc, CredentialsUnavailable)


def is_transport(exc: ApiError) -> bool:
    """No HTTP answer: connection refused, reset, timed out, TLS failure."""
    return exc.status == 0 and not is_credentials_unavailable(exc)


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


def is_conflict(exc: ApiError) -> bool:
    """409: another writer got there first: an update with a stale resourceVersion, or a
    create of a name that exists (:func:`is_already_exists` tells them apart). Read again
    and decide again; never retry the same write."""
    return exc.status == 409


def is_already_exists(exc: ApiError) -> bool:
    """409 with the Status reason AlreadyExists: a create of a name that exists."""
    return exc.status == 409 and exc.status_reason == "AlreadyExists"


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


#: Contexts already warned about insecure-skip-tls-verify (once per process).
_warned_insecure: set[str] = set()


def _load_client_cert(ctx: ssl.SSLContext, cert: ClientCert) -> None:
    """Load PEM certificate and key from memory: through a memfd where there is one
    (nothing on disk), else a private temporary file removed at once."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("k8s-watcher-cert"), os.memfd_create("k8s-watcher-key")]
        try:
            for fd, data in zip(fds, (cert.cert_pem, cert.key_pem), strict=True):
                os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="k8s-watcher-") as tmp:
        cert_path, key_path = Path(tmp, "cert"), Path(tmp, "key")
        for path, data in ((cert_path, cert.cert_pem), (key_path, cert.key_pem)):
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.write(fd, data)
            os.close(fd)
        ctx.load_cert_chain(str(cert_path), str(key_path))


class Transport:
    """The connection pool of one context, rebuilt when its TLS material changes (a new
    client certificate, a rewritten CA file)."""

    def __init__(self, entry: ContextEntry) -> None:
        cluster = entry.cluster
        self.context = entry.name
        self.server = str(cluster.get("server") or "")
        if not self.server.startswith(("https://", "http://")):
            raise KubeconfigError(
                f"context {entry.name}: cluster server {self.server or '(none)'} is not an http(s) URL"
            )
        self.insecure = bool(cluster.get("insecure-skip-tls-verify"))
        self.server_name = cluster.get("tls-server-name")
        self.ca_file = (
            entry.path(cluster["certificate-authority"]) if cluster.get("certificate-authority") else None
        )
        self.ca_data: str | None = None
        if cluster.get("certificate-authority-data"):
            try:
                self.ca_data = base64.b64decode(cluster["certificate-authority-data"], validate=True).decode()
            except (binascii.Error, ValueError):
                raise KubeconfigError(
                    f"context {entry.name}: certificate-authority-data is not valid base64"
                ) from None
        self.proxy_url = cluster.get("proxy-url")
        if self.proxy_url and urlsplit(self.proxy_url).scheme not in ("http", "https", "socks5", "socks5h"):
            raise KubeconfigError(
                f"context {entry.name}: proxy-url {self.proxy_url} is not http(s) or socks5"
            )
        self._key: tuple[Any, ...] | None = None
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()
        if self.insecure and entry.name not in _warned_insecure:
            _warned_insecure.add(entry.name)
            log.warning(
                "%s: insecure-skip-tls-verify is set: the API server's certificate is not verified",
                entry.name,
            )
        self.pool(None)  # a bad CA file or proxy is reported now, not at the first request

    def _ssl_context(self, cert: ClientCert | None) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data
            )
        except (OSError, ssl.SSLError) as exc:
            raise KubeconfigError(
                f"context {self.context}: certificate authority {self.ca_file or '(data)'} cannot be used: {exc}"
            ) from exc
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            try:
                _load_client_cert(ctx, cert)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialError(
                    f"context {self.context}: the client certificate or key cannot be used: {exc}"
                ) from None
        return ctx

    def _ca_stamp(self) -> float | None:
        try:
            return self.ca_file.stat().st_mtime if self.ca_file else None
        except OSError:
            return None

    def pool(self, cert: ClientCert | None) -> urllib3.PoolManager:
        key = (cert, self._ca_stamp())
        if key == self._key and self._pool is not None:
            return self._pool
        with self._lock:
            if key != self._key or self._pool is None:
                old = self._pool
                self._pool = self._build(self._ssl_context(cert))
                self._key = key
                if old is not None:
                    log.info("%s: TLS material changed; new connections use it", self.context)
                    old.clear()  # idle connections only: running watches keep theirs
            return self._pool

    def _build(self, ctx: ssl.SSLContext) -> urllib3.PoolManager:
        kw: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": 64,
            "ssl_context": ctx,
            "cert_reqs": "CERT_NONE" if self.insecure else "CERT_REQUIRED",
            "retries": False,
        }
        if self.server_name:
            kw["server_hostname"] = self.server_name
            kw["assert_hostname"] = self.server_name
        if self.insecure:
            kw["assert_hostname"] = False
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if not self.proxy_url:
            return urllib3.PoolManager(**kw)
        if self.proxy_url.startswith("socks"):
            try:
                from urllib3.contrib.socks import SOCKSProxyManager
            except ImportError:
                raise KubeconfigError(
                    f"context {self.context}: proxy-url {self.proxy_url} needs the PySocks package"
                ) from None
            return SOCKSProxyManager(self.proxy_url, **kw)
        return urllib3.ProxyManager(self.proxy_url, **kw)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()


class KubeClient:
    """Raw JSON access to one context's API server."""

    def __init__(
        self,
        kubeconfig: Path,
        context: str,
        *,
        exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
        entry: ContextEntry | None = None,
    ) -> None:
        """``entry``: the context's entries already read (the pod's own, from no file)."""
        entry = entry or context_entry(kubeconfig, context)
        self.entry = entry
        self.context = context
        try:
            self.credentials = Credentials.for_entry(entry, exec_timeout=exec_timeout)
            self.transport = Transport(entry)
        except KubeconfigError as exc:
            raise KubeconfigError(f"{exc} (kubeconfig {kubeconfig})") from exc
        self.info = ClusterInfo(
            context=context,
            cluster_name=entry.cluster_name,
            server=self.transport.server,
            ca_file=entry.cluster.get("certificate-authority"),
            insecure_skip_verify=self.transport.insecure,
            namespace=entry.namespace,
        )

    def _send(
        self, url: str, accept: str, timeout: urllib3.Timeout, method: str = "GET", body: bytes | None = None
    ) -> tuple[Any, float]:
        """One request with the current credentials; returns the response and the
        monotonic time the credentials were taken (for :meth:`Credentials.refresh`)."""
        try:
            cred = self.credentials.get()
            pool = self.transport.pool(cred.client_cert)
        except CredentialError as exc:
            raise CredentialsUnavailable(str(exc)) from exc
        taken = time.monotonic()
        headers = {"Accept": accept, "User-Agent": f"k8s-watcher/{__version__}"}
        if cred.authorization:
            headers["Authorization"] = cred.authorization
        if body is not None:
            headers["Content-Type"] = JSON
        try:
            resp = pool.request(
                method, url, body=body, headers=headers, timeout=timeout, preload_content=False
            )
        except urllib3.exceptions.SSLError as exc:
            raise ApiError(0, "TLS error", str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "connection error", str(exc)) from exc
        return resp, taken

    def _open(
        self,
        path: str,
        query: Mapping[str, Any],
        *,
        accept: str,
        timeout: urllib3.Timeout,
        method: str = "GET",
        body: bytes | None = None,
    ) -> Any:
        url = self.transport.server.rstrip("/") + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        resp, taken = self._send(url, accept, timeout, method, body)
        if resp.status == 401:
            # Expired, revoked or rotated: fetch the credential again (once for all the
            # requests it failed) and retry this request once (a write too: the server
            # did nothing with a request it did not authenticate).
            resp.drain_conn()
            resp.release_conn()
            log.debug("%s: 401 from the API server; refreshing the credentials and retrying", self.context)
            self.credentials.refresh(taken)
            resp, _ = self._send(url, accept, timeout, method, body)
        if resp.status >= 400:
            raw = resp.read()
            resp.release_conn()
            message = status_reason = ""
            try:
                status = orjson.loads(raw)
                message = str(status.get("message", ""))
                status_reason = str(status.get("reason") or "")
            except (orjson.JSONDecodeError, AttributeError):
                message = raw[:200].decode(errors="replace")
            raise ApiError(resp.status, resp.reason or "", message, status_reason=status_reason)
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

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """One request with a JSON body or none (POST, PUT, DELETE; not PATCH, which
        needs a patch content type), the answer parsed. Errors as :meth:`get`; a 409 is
        :func:`is_conflict` (and :func:`is_already_exists` for a create)."""
        resp = self._open(
            path,
            query or {},
            accept=JSON,
            timeout=urllib3.Timeout(connect=10, read=timeout),
            method=method,
            body=orjson.dumps(body) if body is not None else None,
        )
        try:
            raw = resp.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "connection error", str(exc)) from exc
        finally:
            resp.release_conn()
        return orjson.loads(raw) if raw else {}

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
        self.transport.close()


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
