"""Where a context's credentials come from, and when to fetch them again.

One :class:`Credentials` per context, shared by every request of its client (so by
every informer of the context): a bearer token or basic auth for the Authorization
header, and a client certificate for TLS. Each source caches what it fetched and
fetches again when it expires (an exec plugin's ``expirationTimestamp``, an OIDC
id-token's ``exp``), when its file changes on disk (``tokenFile``, certificate and
key files), or when the API server answered 401 to it (:meth:`Credentials.refresh`,
called once per rejected credential however many requests it failed).

Nothing here logs or formats a secret: errors name the command, the file or the
endpoint, never what a plugin printed on stdout or an issuer returned (a failing
plugin's last line of stderr is shown: that is where plugins say what to do).

Every error about credential material names the context and the kubeconfig field it
came from (``context prod: client-key /etc/k.pem cannot be read: Permission denied``):
bad data in the kubeconfig (not base64, not PEM, an unusable OIDC CA) is a
:class:`KubeconfigError` when the client is built, so the daemon reports that context
and runs the others; a file that cannot be read when a request needs it is a
:class:`CredentialError` of that request.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from watcher.kubeconfig import ContextEntry, KubeconfigError

log = logging.getLogger(__name__)

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
#: How long a hanging exec plugin may run before it is killed.
DEFAULT_EXEC_TIMEOUT = 30.0
#: A failed fetch is not retried before this many seconds: the informers of a context
#: all ask at once, and a hanging plugin must not run once per informer.
FAILURE_HOLD = 5.0
#: A credential this close to its expiry is fetched again before use.
EXPIRY_MARGIN = 5.0


class CredentialError(Exception):
    """The credentials could not be obtained (plugin missing, failing, hanging or
    printing garbage; a file unreadable; an OIDC refresh refused)."""


@dataclass(frozen=True)
class ClientCert:
    """PEM certificate chain and private key for TLS client authentication."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never show the key
        return "ClientCert(...)"


@dataclass(frozen=True)
class Credential:
    """What one source supplies: an Authorization header value, a client certificate, or both."""

    authorization: str | None = None
    client_cert: ClientCert | None = None
    #: Wall-clock time after which it must be fetched again (None: no expiry known).
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Credential(authorization={'***' if self.authorization else None}, client_cert={self.client_cert!r})"


class CredentialSource(Protocol):
    def get(self) -> Credential:
        """The current credential, fetched again first if it expired or changed."""
        ...

    def refresh(self, used_at: float) -> None:
        """The API server rejected what this source supplied at monotonic time
        ``used_at``: fetch again, unless that already happened since."""
        ...


class Static:
    """A credential written in the kubeconfig (token, username/password, certificate data)."""

    def __init__(self, credential: Credential) -> None:
        self.credential = credential

    def get(self) -> Credential:
        return self.credential

    def refresh(self, used_at: float) -> None:
        return None


def _read(path: Path, what: str) -> bytes:
    """``what``: the context and the kubeconfig field naming the file."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{what} {path} cannot be read: {exc.strerror}") from exc


def _mtime(path: Path, what: str) -> float:
    try:
        return path.stat().st_mtime
    except OSError as exc:
        raise CredentialError(f"{what} {path} cannot be read: {exc.strerror}") from exc


def pem(data: bytes, what: str, error: type[Exception]) -> bytes:
    """``data`` if it holds a PEM block: a DER file or a wrong file is named here, not by
    OpenSSL's ``[SSL] PEM lib`` when the connection is set up."""
    if b"-----BEGIN " not in data:
        raise error(f"{what} is not PEM (no -----BEGIN line)")
    return data


class Files:
    """Credentials kept in files, read again whenever a file's mtime changes: a
    ``tokenFile`` (a projected service-account token is rotated about hourly), and
    ``client-certificate``/``client-key`` files (rotated by cert-manager and the like)."""

    def __init__(
        self,
        *,
        context: str = "",
        token_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.context = context
        self.token_file, self.cert_file, self.key_file = token_file, cert_file, key_file
        self._stamp: tuple[float, ...] | None = None
        self._credential = Credential()
        self._lock = threading.Lock()

    def _what(self, field: str) -> str:
        return f"context {self.context}: {field}" if self.context else field

    def _files(self) -> list[tuple[Path, str]]:
        named = [
            (self.token_file, "tokenFile"),
            (self.cert_file, "client-certificate"),
            (self.key_file, "client-key"),
        ]
        return [(p, self._what(field)) for p, field in named if p is not None]

    def get(self) -> Credential:
        with self._lock:
            stamp = tuple(_mtime(p, what) for p, what in self._files())
            if stamp != self._stamp:
                self._credential = self._load()
                self._stamp = stamp
            return self._credential

    def _load(self) -> Credential:
        authorization = None
        if self.token_file is not None:
            what = self._what("tokenFile")
            token = _read(self.token_file, what).decode(errors="replace").strip()
            if not token:
                raise CredentialError(f"{what} {self.token_file} is empty")
            authorization = "Bearer " + token
        cert = None
        if self.cert_file is not None and self.key_file is not None:
            pems = []
            for path, field in ((self.cert_file, "client-certificate"), (self.key_file, "client-key")):
                what = self._what(field)
                pems.append(pem(_read(path, what), f"{what} {path}", CredentialError))
            cert = ClientCert(*pems)
        return Credential(authorization=authorization, client_cert=cert)

    def refresh(self, used_at: float) -> None:
        with self._lock:
            self._stamp = None  # read again on the next request, changed or not


class _Cached:
    """A credential fetched by ``fetch`` and kept until it expires or is refused; a
    failure is held for :data:`FAILURE_HOLD` seconds. One fetch at a time."""

    def __init__(self, name: str, fetch: Callable[[], Credential]) -> None:
        self.name = name
        self._fetch = fetch
        self._lock = threading.Lock()
        self._credential: Credential | None = None
        self._fetched_at = float("-inf")  # monotonic
        self._failure: tuple[float, CredentialError] | None = None

    def get(self) -> Credential:
        with self._lock:
            cred = self._credential
            if cred is not None and (
                cred.expires_at is None or cred.expires_at - EXPIRY_MARGIN > time.time()
            ):
                return cred
            if self._failure is not None and time.monotonic() < self._failure[0]:
                raise self._failure[1]
            try:
                cred = self._fetch()
            except CredentialError as exc:
                self._failure = (time.monotonic() + FAILURE_HOLD, exc)
                raise
            self._failure = None
            self._credential, self._fetched_at = cred, time.monotonic()
            return cred

    def refresh(self, used_at: float) -> None:
        with self._lock:
            if self._credential is not None and self._fetched_at <= used_at:
                log.info("%s: the API server refused it (401); fetching a new one", self.name)
                self._credential = None


# --------------------------------------------------------------------------- exec plugins


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class ExecConfig:
    """A kubeconfig ``user.exec`` entry."""

    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    api_version: str
    install_hint: str | None
    interactive_mode: str
    provide_cluster_info: bool

    @classmethod
    def parse(cls, raw: dict[str, Any], entry: ContextEntry) -> ExecConfig:
        where = f"context {entry.name}: exec"
        command = raw.get("command")
        if not command or not isinstance(command, str):
            raise KubeconfigError(f"{where}: no command")
        api_version = raw.get("apiVersion") or ""
        if api_version not in EXEC_API_VERSIONS:
            raise KubeconfigError(
                f"{where}: apiVersion {api_version or '(none)'} is not supported (use {' or '.join(EXEC_API_VERSIONS)})"
            )
        mode = raw.get("interactiveMode") or ("" if api_version.endswith("/v1") else "IfAvailable")
        if mode not in ("Never", "IfAvailable", "Always"):
            raise KubeconfigError(
                f"{where}: interactiveMode must be Never, IfAvailable or Always, not {mode or '(none)'}"
            )
        if mode == "Always":
            raise KubeconfigError(
                f"{where}: {command} needs an interactive terminal (interactiveMode: Always), which k8s-watcher "
                "never has; configure the plugin for non-interactive use"
            )
        env = tuple(
            (str(e["name"]), str(e.get("value", ""))) for e in raw.get("env") or [] if isinstance(e, dict)
        )
        # A command with a slash is relative to the kubeconfig (as client-go resolves it).
        if "/" in command:
            command = str(entry.path(command))
        return cls(
            command=command,
            args=tuple(str(a) for a in raw.get("args") or []),
            env=env,
            api_version=api_version,
            install_hint=raw.get("installHint"),
            interactive_mode=mode,
            provide_cluster_info=bool(raw.get("provideClusterInfo")),
        )


def exec_info(config: ExecConfig, cluster: dict[str, Any]) -> dict[str, Any]:
    """The ExecCredential handed to the plugin in ``KUBERNETES_EXEC_INFO``."""
    spec: dict[str, Any] = {"interactive": False}
    if config.provide_cluster_info:
        info = {
            "server": cluster.get("server"),
            "tls-server-name": cluster.get("tls-server-name"),
            "insecure-skip-tls-verify": bool(cluster.get("insecure-skip-tls-verify")),
            "certificate-authority-data": cluster.get("certificate-authority-data"),
            "proxy-url": cluster.get("proxy-url"),
        }
        extension = cluster.get("extensions") or [{}]
        config_ext = next(
            (
                e.get("extension")
                for e in extension
                if isinstance(e, dict) and e.get("name") == "client.authentication.k8s.io/exec"
            ),
            None,
        )
        if config_ext is not None:
            info["config"] = config_ext
        spec["cluster"] = {k: v for k, v in info.items() if v not in (None, False)}
    return {"apiVersion": config.api_version, "kind": "ExecCredential", "spec": spec}


class ExecPlugin:
    """Runs a ``client.authentication.k8s.io`` exec credential plugin and reads its
    ExecCredential: a token and/or a client certificate, with an optional expiry.

    Never interactive: stdin is closed and ``KUBERNETES_EXEC_INFO`` says so. A plugin
    still running after ``timeout`` seconds is killed (its whole process group).
    """

    def __init__(
        self, config: ExecConfig, cluster: dict[str, Any], *, timeout: float = DEFAULT_EXEC_TIMEOUT
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.timeout = timeout

    @property
    def name(self) -> str:
        return Path(self.config.command).name

    def _describe_missing(self) -> str:
        hint = f"; {self.config.install_hint.strip()}" if self.config.install_hint else ""
        return f"exec credential plugin {self.config.command!r} not found (not on PATH, not executable){hint}"

    def run(self) -> Credential:
        env = {**os.environ, **dict(self.config.env)}
        env["KUBERNETES_EXEC_INFO"] = orjson.dumps(exec_info(self.config, self.cluster)).decode()
        try:
            proc = subprocess.Popen(
                [self.config.command, *self.config.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise CredentialError(self._describe_missing()) from exc
        except OSError as exc:
            raise CredentialError(
                f"exec credential plugin {self.config.command!r} cannot run: {exc.strerror}"
            ) from exc
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CredentialError(
                f"exec credential plugin {self.config.command!r} timed out after {self.timeout:g}s (killed)"
            ) from None
        if proc.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or [""])[-1][:200]
            raise CredentialError(
                f"exec credential plugin {self.config.command!r} exited with status {proc.returncode}"
                + (f": {last}" if last else "")
            )
        log.info("exec credential plugin %s ran", self.name)
        return self._parse(out)

    def _parse(self, out: bytes) -> Credential:
        bad = f"exec credential plugin {self.config.command!r} printed"
        try:
            doc = orjson.loads(out)
        except orjson.JSONDecodeError as exc:
            raise CredentialError(f"{bad} something that is not JSON ({len(out)} bytes; {exc.msg})") from None
        if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
            raise CredentialError(f"{bad} JSON that is not an ExecCredential")
        if doc.get("apiVersion") != self.config.api_version:
            raise CredentialError(
                f"{bad} an ExecCredential of apiVersion {doc.get('apiVersion')}, the kubeconfig asks for {self.config.api_version}"
            )
        status = doc.get("status")
        if not isinstance(status, dict):
            raise CredentialError(f"{bad} an ExecCredential without status")
        token = status.get("token")
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key):
            raise CredentialError(f"{bad} only one of clientCertificateData and clientKeyData")
        if not token and not cert:
            raise CredentialError(f"{bad} an ExecCredential with neither a token nor a client certificate")
        expires_at = None
        if status.get("expirationTimestamp"):
            try:
                expires_at = _rfc3339(str(status["expirationTimestamp"]))
            except ValueError:
                raise CredentialError(f"{bad} an expirationTimestamp that is not RFC 3339") from None
        return Credential(
            authorization=f"Bearer {token}" if token else None,
            client_cert=ClientCert(str(cert).encode(), str(key).encode()) if cert else None,
            expires_at=expires_at,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.communicate()


# --------------------------------------------------------------------------- OIDC


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: the API server does that)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error, orjson.JSONDecodeError):
        return None


class OidcRefresher:
    """``auth-provider: oidc``: the id-token until it expires, then a new one from the
    issuer's token endpoint (OpenID discovery) with the refresh token. The new tokens
    are kept in memory; the kubeconfig is never written."""

    def __init__(self, config: dict[str, Any], entry: ContextEntry) -> None:
        self.issuer = str(config.get("idp-issuer-url") or "").rstrip("/")
        self.client_id = str(config.get("client-id") or "")
        self.client_secret = config.get("client-secret")
        self.refresh_token = config.get("refresh-token")
        self.scopes = [s for s in str(config.get("extra-scopes") or "").split(",") if s]
        self._id_token: str | None = config.get("id-token")
        self._ssl = _issuer_tls(config, entry)
        self._stale = False

    def fetch(self) -> Credential:
        token = self._id_token
        expiry = jwt_expiry(token) if token else None
        if token and not self._stale and (expiry is None or expiry - EXPIRY_MARGIN > time.time()):
            return Credential(authorization=f"Bearer {token}", expires_at=expiry)
        token = self._refresh()
        self._id_token, self._stale = token, False
        return Credential(authorization=f"Bearer {token}", expires_at=jwt_expiry(token))

    def mark_stale(self) -> None:
        self._stale = True

    def _post_json(self, url: str, form: dict[str, str] | None, headers: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, headers={"Accept": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                doc = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise CredentialError(f"OIDC issuer {self.issuer}: {url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CredentialError(f"OIDC issuer {self.issuer}: {url} cannot be reached: {exc}") from None
        except orjson.JSONDecodeError:
            raise CredentialError(f"OIDC issuer {self.issuer}: {url} did not answer JSON") from None
        if not isinstance(doc, dict):
            raise CredentialError(f"OIDC issuer {self.issuer}: {url} did not answer a JSON object")
        return doc

    def _refresh(self) -> str:
        if not (self.issuer and self.refresh_token and self.client_id):
            raise CredentialError(
                "OIDC id-token expired and cannot be refreshed (idp-issuer-url, client-id and refresh-token are needed)"
            )
        discovery = self._post_json(f"{self.issuer}/.well-known/openid-configuration", None, {})
        endpoint = discovery.get("token_endpoint")
        if not endpoint:
            raise CredentialError(f"OIDC issuer {self.issuer}: no token_endpoint in its discovery document")
        form = {"grant_type": "refresh_token", "refresh_token": str(self.refresh_token)}
        if self.scopes:
            form["scope"] = " ".join(["openid", *self.scopes])
        headers = {}
        if self.client_secret:
            pair = f"{urllib.parse.quote(self.client_id)}:{urllib.parse.quote(str(self.client_secret))}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
        answer = self._post_json(str(endpoint), form, headers)
        id_token = answer.get("id_token")
        if not id_token:
            raise CredentialError(f"OIDC issuer {self.issuer}: the token response has no id_token")
        if answer.get("refresh_token"):
            self.refresh_token = answer["refresh_token"]
        log.info("OIDC id-token refreshed from %s", self.issuer)
        return str(id_token)


def _issuer_tls(config: dict[str, Any], entry: ContextEntry) -> ssl.SSLContext:
    """The TLS context for the OIDC issuer: its CA from ``idp-certificate-authority``
    (a file) or ``idp-certificate-authority-data``, else the system's."""
    where = f"context {entry.name}: auth-provider oidc"
    ca_file = (
        entry.path(config["idp-certificate-authority"]) if config.get("idp-certificate-authority") else None
    )
    cadata = None
    if config.get("idp-certificate-authority-data"):
        field = f"{where} idp-certificate-authority-data"
        raw = pem(_b64_data(config["idp-certificate-authority-data"], field), field, KubeconfigError)
        cadata = raw.decode("ascii", errors="replace")
    if ca_file is not None:
        # Read here so that a missing or unreadable file says so (ssl says "[X509] no
        # certificate or crl found" for a file of another kind, and nothing else).
        try:
            pem(ca_file.read_bytes(), f"{where} idp-certificate-authority {ca_file}", KubeconfigError)
        except OSError as exc:
            raise KubeconfigError(
                f"{where} idp-certificate-authority {ca_file} cannot be read: {exc.strerror}"
            ) from None
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        field = "idp-certificate-authority" if ca_file else "idp-certificate-authority-data"
        raise KubeconfigError(f"{where} {field} holds no usable certificate: {exc}") from None


class Oidc(_Cached):
    def __init__(self, config: dict[str, Any], entry: ContextEntry) -> None:
        self.refresher = OidcRefresher(config, entry)
        super().__init__(f"context {entry.name}: OIDC id-token", self.refresher.fetch)

    def refresh(self, used_at: float) -> None:
        with self._lock:
            if self._credential is not None and self._fetched_at <= used_at:
                log.info("%s: the API server refused it (401); refreshing it", self.name)
                self._credential = None
                self.refresher.mark_stale()


# --------------------------------------------------------------------------- one context


def _b64_data(value: Any, what: str) -> bytes:
    """A ``*-data`` field decoded; ``what`` names the context and the field."""
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{what} is not valid base64") from None


def _b64(value: str, what: str, entry: ContextEntry) -> bytes:
    field = f"context {entry.name}: {what}"
    return pem(_b64_data(value, field), field, KubeconfigError)


class Credentials:
    """Every credential source of one context, merged: the first source with an
    Authorization value supplies it, the first with a client certificate supplies that."""

    def __init__(self, sources: Sequence[CredentialSource]) -> None:
        self.sources = list(sources)

    def get(self) -> Credential:
        merged = Credential()
        for source in self.sources:
            cred = source.get()
            merged = Credential(
                authorization=merged.authorization or cred.authorization,
                client_cert=merged.client_cert or cred.client_cert,
            )
        return merged

    def refresh(self, used_at: float) -> None:
        for source in self.sources:
            source.refresh(used_at)

    @property
    def static_client_cert(self) -> ClientCert | None:
        """The client certificate written in the kubeconfig itself, if any."""
        return next((s.credential.client_cert for s in self.sources if isinstance(s, Static)), None)

    @property
    def may_block(self) -> bool:
        """Whether :meth:`get` may run a process or an HTTP request (an exec plugin, an
        OIDC refresh): such a get must not run on the I/O loop's thread."""
        return any(isinstance(s, _Cached) for s in self.sources)

    @classmethod
    def for_entry(cls, entry: ContextEntry, *, exec_timeout: float = DEFAULT_EXEC_TIMEOUT) -> Credentials:
        user = entry.user
        sources: list[CredentialSource] = []
        static = Credential()
        if user.get("token"):
            static = Credential(authorization=f"Bearer {user['token']}")
        elif user.get("username") is not None and user.get("password") is not None:
            pair = f"{user['username']}:{user['password']}".encode()
            static = Credential(authorization="Basic " + base64.b64encode(pair).decode())
        if user.get("client-certificate-data") and user.get("client-key-data"):
            static = Credential(
                authorization=static.authorization,
                client_cert=ClientCert(
                    _b64(user["client-certificate-data"], "client-certificate-data", entry),
                    _b64(user["client-key-data"], "client-key-data", entry),
                ),
            )
        if static.authorization or static.client_cert:
            sources.append(Static(static))
        token_file = (
            entry.path(user["tokenFile"]) if user.get("tokenFile") and not user.get("token") else None
        )
        cert_file = key_file = None
        if user.get("client-certificate") and user.get("client-key") and not static.client_cert:
            cert_file, key_file = entry.path(user["client-certificate"]), entry.path(user["client-key"])
        if token_file or cert_file:
            sources.append(
                Files(context=entry.name, token_file=token_file, cert_file=cert_file, key_file=key_file)
            )
        if isinstance(user.get("exec"), dict):
            plugin = ExecPlugin(ExecConfig.parse(user["exec"], entry), entry.cluster, timeout=exec_timeout)
            sources.append(_Cached(f"context {entry.name}: exec credential plugin {plugin.name}", plugin.run))
        provider = user.get("auth-provider")
        if isinstance(provider, dict):
            if provider.get("name") != "oidc":
                raise KubeconfigError(
                    f"context {entry.name}: auth-provider {provider.get('name')!r} is not supported "
                    "(client-go dropped the gcp and azure providers: use their exec plugins, "
                    "gke-gcloud-auth-plugin or kubelogin)"
                )
            sources.append(Oidc(provider.get("config") or {}, entry))
        return cls(sources)
