"""Kubeconfig contexts to API clients, and raw JSON requests.

A context's kubeconfig entries (``watcher.kubeconfig``) give the server, its TLS
settings and the user's credential sources (``watcher.credentials``). Requests run on
the process's I/O loop (``watcher.eventloop``) over ``watcher.transport``: HTTP/2 where
the server speaks it, so every watch of a context is one stream on one connection (as
client-go's are), HTTP/1.1 with a bounded number of connections otherwise. Responses
stay unparsed until :mod:`orjson` reads them; no model objects are built (they are
slow, memory-hungry and would hold secret data we never asked for).

Connections are shared by every client with the same server and TLS identity (CA,
client certificate, server name, proxy): contexts of one cluster that differ only in
their bearer token share one connection, since a token travels per request.

Credentials are consulted on every request: an expired exec or OIDC token is fetched
again (in an executor: a plugin may run for seconds), a rotated token or certificate
file is read again, and a 401 refreshes the credential and retries the request once.
A new client certificate moves the client to a new connection pool; the old pool is
closed, so its watches break and re-watch (from their resourceVersion) with the new one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import http
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from watcher import __version__
from watcher.credentials import (
    DEFAULT_EXEC_TIMEOUT,
    ClientCert,
    Credential,
    CredentialError,
    Credentials,
    pem,
)
from watcher.eventloop import IoLoop, io_loop
from watcher.kubeconfig import ContextEntry, KubeconfigError, context_entry
from watcher.transport import ConnectionPool, HttpResponse, TransportError

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

    def __init__(
        self,
        status: int,
        reason: str,
        message: str = "",
        *,
        status_reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        #: The ``reason`` of the Status body (``AlreadyExists``, ``Conflict``, ...): what
        #: the server means, where ``reason`` is only the HTTP reason phrase.
        self.status_reason = status_reason
        #: Seconds the server asked us to wait (``Retry-After`` of a 429 or 503: API
        #: Priority and Fairness shedding load); a backoff never waits less.
        self.retry_after = retry_after


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


#: HTTP/1.1 connections per pool when a server (or a proxy) refuses HTTP/2: a watch
#: holds one for its whole life, so past this many the watches take turns (see
#: ``watcher.informers``); with HTTP/2 one connection carries them all.
HTTP1_MAX_CONNECTIONS = 100


#: How long a watch may wait for an HTTP/1.1 connection of a crowded pool.
HTTP1_WATCH_QUEUE_SECONDS = 900


class TlsSettings:
    """A context's server, TLS and proxy settings from its kubeconfig entries, checked
    at once (a bad CA or proxy is reported when the client is built, not at the first
    request), and the connection pool for a client certificate."""

    def __init__(self, entry: ContextEntry) -> None:
        cluster = entry.cluster
        self.context = entry.name
        self.server = str(cluster.get("server") or "").rstrip("/")
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
            field = f"context {entry.name}: certificate-authority-data"
            try:
                raw = base64.b64decode(cluster["certificate-authority-data"], validate=True)
            except (binascii.Error, ValueError):
                raise KubeconfigError(f"{field} is not valid base64") from None
            self.ca_data = pem(raw, field, KubeconfigError).decode("ascii", errors="replace")
        if self.ca_file is not None:
            field = f"context {entry.name}: certificate-authority {self.ca_file}"
            try:
                pem(self.ca_file.read_bytes(), field, KubeconfigError)
            except OSError as exc:
                raise KubeconfigError(f"{field} cannot be read: {exc.strerror}") from None
        self.proxy_url = cluster.get("proxy-url")
        if self.proxy_url and urlsplit(self.proxy_url).scheme not in ("http", "https", "socks5", "socks5h"):
            raise KubeconfigError(
                f"context {entry.name}: proxy-url {self.proxy_url} is not http(s) or socks5"
            )
        if self.insecure and entry.name not in _warned_insecure:
            _warned_insecure.add(entry.name)
            log.warning(
                "%s: insecure-skip-tls-verify is set: the API server's certificate is not verified",
                entry.name,
            )
        self.ssl_context(None)  # a bad CA file is reported now, not at the first request

    def ssl_context(self, cert: ClientCert | None) -> ssl.SSLContext | None:
        if self.server.startswith("http://"):
            return None
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data
            )
        except (OSError, ssl.SSLError) as exc:
            field = f"certificate-authority {self.ca_file}" if self.ca_file else "certificate-authority-data"
            raise KubeconfigError(f"context {self.context}: {field} cannot be used: {exc}") from exc
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            try:
                _load_client_cert(ctx, cert)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialError(
                    f"context {self.context}: client-certificate and client-key (data or files) "
                    f"do not make a usable pair: {exc}"
                ) from None
        return ctx

    def _ca_stamp(self) -> float | None:
        try:
            return self.ca_file.stat().st_mtime if self.ca_file else None
        except OSError:
            return None

    def pool_key(self, cert: ClientCert | None) -> tuple[Any, ...]:
        """Clients with equal keys share connections: same server, same TLS identity."""
        return (self.server, self.ca_file, self._ca_stamp(), self.ca_data, self.insecure, self.server_name,
                self.proxy_url, cert)  # fmt: skip


class _SharedPools:
    """The connection pools of the process, by :meth:`TlsSettings.pool_key`, each kept
    while a client uses it. Only touched on the I/O loop."""

    def __init__(self) -> None:
        self._pools: dict[tuple[Any, ...], tuple[ConnectionPool, int]] = {}
        self._turns: dict[ConnectionPool, _Turns] = {}

    def acquire(self, key: tuple[Any, ...], tls: TlsSettings, cert: ClientCert | None) -> ConnectionPool:
        found = self._pools.get(key)
        if found is not None:
            self._pools[key] = (found[0], found[1] + 1)
            return found[0]
        pool = ConnectionPool(
            tls.server,
            ssl_context=tls.ssl_context(cert),
            server_hostname=tls.server_name,
            proxy_url=tls.proxy_url,
            max_http1_connections=HTTP1_MAX_CONNECTIONS,
            name=tls.context,
        )
        self._pools[key] = (pool, 1)
        return pool

    def release(self, key: tuple[Any, ...]) -> None:
        found = self._pools.get(key)
        if found is None:
            return
        pool, users = found
        if users > 1:
            self._pools[key] = (pool, users - 1)
            return
        del self._pools[key]
        self._turns.pop(pool, None)
        # Its last user is gone (a removed context, a rotated certificate): running
        # watches on it break and re-watch from their resourceVersion elsewhere.
        asyncio.get_running_loop().create_task(pool.aclose())

    def pools(self) -> list[ConnectionPool]:
        return [pool for pool, _ in self._pools.values()]

    def turns(self, pool: ConnectionPool) -> _Turns:
        """The turn-taking of an HTTP/1.1 pool's watches."""
        found = self._turns.get(pool)
        if found is None:
            found = self._turns[pool] = _Turns(pool)
        return found


_shared_pools = _SharedPools()

#: Runs credential fetches that may block (exec plugins, OIDC refreshes) off the loop.
_credential_executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="credentials")


def connection_stats(io: IoLoop | None = None) -> dict[str, int]:
    """Connection pools, open connections and requests in flight of the process, and
    how many pools speak HTTP/2 (from any thread but the loop's)."""

    async def stats() -> dict[str, int]:
        pools = _shared_pools.pools()
        return {
            "pools": len(pools),
            "connections": sum(p.connections for p in pools),
            "streams": sum(p.streams for p in pools),
            "http2_pools": sum(1 for p in pools if p.protocol == "h2"),
        }

    return (io or io_loop()).run(stats(), timeout=10)


class KubeClient:
    """Raw JSON access to one context's API server.

    The ``a*`` methods are coroutines for the I/O loop (the informers use them);
    :meth:`get` and :meth:`send` run the same requests from any other thread.
    """

    def __init__(
        self,
        kubeconfig: Path,
        context: str,
        *,
        exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
        entry: ContextEntry | None = None,
        loop: IoLoop | None = None,
    ) -> None:
        """``entry``: the context's entries already read (the pod's own, from no file)."""
        entry = entry or context_entry(kubeconfig, context)
        self.entry = entry
        self.context = context
        self.io = loop or io_loop()
        try:
            self.credentials = Credentials.for_entry(entry, exec_timeout=exec_timeout)
            self.tls = TlsSettings(entry)
        except KubeconfigError as exc:
            raise KubeconfigError(f"{exc} (kubeconfig {kubeconfig})") from exc
        static = self.credentials.static_client_cert
        if static is not None:
            # A pair given as data is checked now (bad entries are refused at start, as
            # any other), not at the first request.
            try:
                self.tls.ssl_context(static)
            except CredentialError as exc:
                raise KubeconfigError(str(exc)) from None
        self.info = ClusterInfo(
            context=context,
            cluster_name=entry.cluster_name,
            server=self.tls.server,
            ca_file=entry.cluster.get("certificate-authority"),
            insecure_skip_verify=self.tls.insecure,
            namespace=entry.namespace,
        )
        self._pool_key: tuple[Any, ...] | None = None
        self._pool: ConnectionPool | None = None
        self._closed = False

    @property
    def server_key(self) -> str:
        """Clients of one API server share its list slots (``watcher.informers``)."""
        return self.tls.server

    @property
    def protocol(self) -> str | None:
        """``h2``, ``http/1.1``, or None before the first connection."""
        return self._pool.protocol if self._pool is not None else None

    @property
    def crowded(self) -> bool:
        """Requests wait for one of the bounded HTTP/1.1 connections: watches should
        take turns (``watcher.informers``), not hold a connection for minutes."""
        pool = self._pool
        return pool is not None and pool.protocol == "http/1.1" and pool.waiting > 0

    # -- requests on the loop ---------------------------------------------------

    async def _credential(self) -> Credential:
        try:
            if self.credentials.may_block:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(_credential_executor, self.credentials.get)
            return self.credentials.get()
        except CredentialError as exc:
            raise CredentialsUnavailable(str(exc)) from exc

    async def _refresh_credentials(self, taken: float) -> None:
        if self.credentials.may_block:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(_credential_executor, self.credentials.refresh, taken)
        else:
            self.credentials.refresh(taken)

    def _pool_for(self, cert: ClientCert | None) -> ConnectionPool:
        key = self.tls.pool_key(cert)
        if key != self._pool_key or self._pool is None:
            if self._closed:
                raise ApiError(0, "client closed", f"context {self.context} is no longer watched")
            try:
                pool = _shared_pools.acquire(key, self.tls, cert)
            except (CredentialError, KubeconfigError) as exc:
                raise CredentialsUnavailable(str(exc)) from exc
            if self._pool_key is not None:
                log.info("%s: TLS material changed; new connections use it", self.context)
                _shared_pools.release(self._pool_key)
            self._pool, self._pool_key = pool, key
        return self._pool

    async def _send(
        self, target: str, accept: str, timeout: float, method: str, body: bytes | None
    ) -> tuple[HttpResponse, float]:
        """One request with the current credentials; returns the response and the
        monotonic time the credentials were taken (for :meth:`Credentials.refresh`)."""
        cred = await self._credential()
        pool = self._pool_for(cred.client_cert)
        taken = asyncio.get_running_loop().time()
        headers = [("accept", accept), ("user-agent", f"k8s-watcher/{__version__}")]
        if cred.authorization:
            headers.append(("authorization", cred.authorization))
        if body is not None:
            headers.append(("content-type", JSON))
        try:
            return await pool.request(method, target, headers, body, timeout=timeout), taken
        except TransportError as exc:
            raise _transport_error(exc) from exc

    async def open(
        self,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        accept: str = JSON,
        timeout: float = 60,
        method: str = "GET",
        body: bytes | None = None,
    ) -> HttpResponse:
        """Send a request; its response once its status is below 400 (the body unread).
        Transport errors and HTTP >= 400 raise :class:`ApiError`."""
        target = path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        resp, taken = await self._send(target, accept, timeout, method, body)
        if resp.status == 401:
            # Expired, revoked or rotated: fetch the credential again (once for all the
            # requests it failed: refresh() forgets only a credential taken before this
            # one was) and retry this request once (a write too: the server did nothing
            # with a request it did not authenticate).
            await resp.aclose()
            log.debug("%s: 401 from the API server; refreshing the credentials and retrying", self.context)
            await self._refresh_credentials(taken)
            resp, _ = await self._send(target, accept, timeout, method, body)
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except TransportError:
                raw = b""
            message = status_reason = ""
            try:
                status = orjson.loads(raw)
                message = str(status.get("message", ""))
                status_reason = str(status.get("reason") or "")
            except (orjson.JSONDecodeError, AttributeError):
                message = raw[:200].decode(errors="replace")
            raise ApiError(
                resp.status,
                resp.reason or http.HTTPStatus(resp.status).phrase,
                message,
                status_reason=status_reason,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        return resp

    async def aget(
        self, path: str, query: Mapping[str, Any] | None = None, *, accept: str = JSON, timeout: float = 60
    ) -> Any:
        """One GET, parsed."""
        resp = await self.open(path, query, accept=accept, timeout=timeout)
        try:
            return orjson.loads(await resp.read())
        except TransportError as exc:
            raise _transport_error(exc) from exc

    async def asend(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """One request with a JSON body or none (POST, PUT, DELETE; not PATCH, which
        needs a patch content type), the answer parsed. A 409 is :func:`is_conflict`
        (and :func:`is_already_exists` for a create)."""
        resp = await self.open(
            path,
            query,
            timeout=timeout,
            method=method,
            body=orjson.dumps(body) if body is not None else None,
        )
        try:
            raw = await resp.read()
        except TransportError as exc:
            raise _transport_error(exc) from exc
        return orjson.loads(raw) if raw else {}

    async def awatch(
        self, path: str, query: Mapping[str, Any], *, accept: str = JSON, read_timeout: float
    ) -> WatchStream:
        """Open a watch; HTTP errors raise here, events come from the returned stream.

        ``read_timeout`` bounds the silence between two reads: the server ends a watch
        at its ``timeoutSeconds`` and sends bookmarks meanwhile, so only a connection
        that died silently (no FIN, no RST) stays quiet longer. (An HTTP/2 connection
        also notices that by itself, with PINGs.)
        """
        # Over HTTP/1.1 a watch may queue for a connection behind others taking turns.
        opening = HTTP1_WATCH_QUEUE_SECONDS if self.protocol == "http/1.1" else 30
        resp = await self.open(path, query, accept=accept, timeout=opening)
        resp.headers = {}  # read by nobody from here on; a watch lives for minutes
        if resp.http_version != "HTTP/1.1" or self._pool is None:
            return WatchStream(resp, read_timeout)
        turns = _shared_pools.turns(self._pool)
        stream = WatchStream(resp, read_timeout, turns)
        turns.add(stream)
        return stream

    # -- the same from other threads --------------------------------------------

    def get(
        self, path: str, query: Mapping[str, Any] | None = None, *, accept: str = JSON, timeout: float = 60
    ) -> Any:
        """:meth:`aget` from a thread other than the loop's."""
        return self.io.run(self.aget(path, query, accept=accept, timeout=timeout))

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """:meth:`asend` from a thread other than the loop's."""
        return self.io.run(self.asend(method, path, body, query, timeout=timeout))

    def close(self) -> None:
        """Give the connection pool back (closed when no other client uses it)."""
        self.io.call(self._release)

    def _release(self) -> None:
        self._closed = True
        if self._pool_key is not None:
            _shared_pools.release(self._pool_key)
            self._pool_key = self._pool = None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the API server sends seconds


def _transport_error(exc: TransportError) -> ApiError:
    reason = {"tls": "TLS error", "timeout": "timed out"}.get(exc.kind, "connection error")
    return ApiError(0, reason, str(exc))


#: How kube-apiserver's JSON encoding of a BOOKMARK watch event begins (metav1.WatchEvent:
#: ``type`` first). A line beginning otherwise is never taken for one.
BOOKMARK_PREFIX = b'{"type":"BOOKMARK"'


class WatchStream:
    """The events of one watch response. Iterating yields the events of each network
    read as a list, so a burst is applied to the cache in one transaction.
    :meth:`close` (on the loop) ends the iteration quietly."""

    __slots__ = ("_on_bookmark", "_partial", "_read_timeout", "_resp", "_turns", "bookmarks_taken", "closed",
                 "resumable_since")  # fmt: skip

    def __init__(self, resp: HttpResponse, read_timeout: float | None, turns: _Turns | None = None) -> None:
        self._resp = resp
        self._read_timeout = read_timeout
        self._turns = turns
        self.closed = False
        #: Set by :meth:`resumable`: ending it early loses nothing.
        self.resumable_since: float | None = None
        #: The end of the body received so far that is not a whole line yet.
        self._partial = b""
        self._on_bookmark: Callable[[str | None], None] | None = None
        #: Bookmarks handed to :meth:`follow_bookmarks`' callback instead of yielded.
        self.bookmarks_taken = 0

    def follow_bookmarks(self, callback: Callable[[str | None], None]) -> None:
        """From now on, a network read that holds only whole BOOKMARK events and arrives
        while the consumer waits for the next batch (everything before it yielded and
        handled) is not yielded: ``callback(resourceVersion)`` is called for each of
        its bookmarks on the loop, in order, from the connection's read. An idle watch's
        bookmark (one a minute, 400 a second for a fleet of 25,000 watches) then wakes
        no task and builds no batch. Any other read is yielded as before; so is a
        bookmark behind anything not yet yielded, so none is taken out of order."""
        self._on_bookmark = callback
        self._resp.tap(self._take_bookmarks)

    def _take_bookmarks(self, data: bytes) -> bool:
        """The transport's tap (:meth:`HttpResponse.tap`): True when ``data`` was only
        bookmarks, each handed to the callback."""
        callback = self._on_bookmark
        if callback is None or self._partial or not data.startswith(BOOKMARK_PREFIX) or data[-1:] != b"\n":
            return False
        versions: list[str | None] = []
        try:
            for line in data.split(b"\n")[:-1]:
                if not line.startswith(BOOKMARK_PREFIX):
                    return False
                event = orjson.loads(line)
                if event.get("type") != "BOOKMARK":
                    return False
                rv = ((event.get("object") or {}).get("metadata") or {}).get("resourceVersion")
                versions.append(str(rv) if rv else None)
        except (ValueError, AttributeError):
            return False  # yielded: the iteration fails on it as it always did
        for rv in versions:
            self.bookmarks_taken += 1
            callback(rv)
        return True

    def resumable(self) -> None:
        """The watch is past any initial state: ended early, its informer re-watches from
        its resourceVersion and misses nothing (so it may be asked to take turns)."""
        self.resumable_since = asyncio.get_running_loop().time()

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        try:
            # receive(), not chunks(): an idle watch waits in one coroutine frame, not in a
            # generator over a waiting coroutine (tens of thousands of them).
            while chunks := await self._resp.receive(self._read_timeout):
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                if b"\n" not in data:
                    self._partial += data
                    continue
                *lines, self._partial = (self._partial + data).split(b"\n")
                events = [orjson.loads(line) for line in lines if line.strip()]
                # Nothing of this batch stays referenced while the watch waits for the
                # next one: tens of thousands of idle watches would each keep their last.
                chunks, data, lines = [], b"", []
                if events:
                    yield events
                events = []
        except (TransportError, ValueError) as exc:
            if not self.closed:
                raise ApiError(0, "watch connection broken", str(exc)) from exc
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._on_bookmark is not None:
                self._on_bookmark = None
                self._resp.tap(None)
            self._resp.cancel()
            if self._turns is not None:
                self._turns.remove(self)


#: Over a crowded HTTP/1.1 pool, how long a watch keeps its connection at least before it
#: may be asked to give it up, and how often that is checked.
HTTP1_TURN_SECONDS = 15.0
HTTP1_TURN_CHECK_SECONDS = 2.0


class _Turns:
    """Watches of an HTTP/1.1 pool whose connections are all taken, with requests
    waiting, take turns: every couple of seconds the longest-held resumable watches end,
    one per waiting request (each informer then re-watches from its resourceVersion, at
    the back of the queue). HTTP/2 never needs this: one connection carries them all."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.streams: set[WatchStream] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: WatchStream) -> None:
        self.streams.add(stream)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, stream: WatchStream) -> None:
        self.streams.discard(stream)

    async def _run(self) -> None:
        try:
            while self.streams:
                await asyncio.sleep(HTTP1_TURN_CHECK_SECONDS)
                self.rotate(asyncio.get_running_loop().time())
        finally:
            self._task = None

    def rotate(self, now: float) -> int:
        """End as many long-held resumable watches as requests wait; returns how many."""
        waiting = self.pool.waiting
        if not waiting:
            return 0
        held = sorted(
            (
                s
                for s in self.streams
                if s.resumable_since is not None and now - s.resumable_since >= HTTP1_TURN_SECONDS
            ),
            key=lambda s: s.resumable_since or 0.0,
        )
        for stream in held[:waiting]:
            stream.close()
        return min(waiting, len(held))


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
