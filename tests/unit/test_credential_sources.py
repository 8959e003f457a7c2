"""Credential sources other than exec plugins (watcher.credentials): the kubeconfig's
own token, basic auth and certificate data, files read again when they change, and
OIDC id-tokens refreshed against a local token endpoint."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from watcher.credentials import CredentialError, Credentials
from watcher.kubeconfig import ContextEntry, KubeconfigError


def entry(tmp_path: Path, **user: Any) -> ContextEntry:
    return ContextEntry(
        name="ctx", cluster_name="c", cluster={"server": "https://127.0.0.1:1"}, user=user,
        namespace=None, base_dir=tmp_path,
    )  # fmt: skip


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def touch_later(path: Path, text: str) -> None:
    """Rewrite a file with a visibly newer mtime."""
    path.write_text(text)
    later = time.time() + 2
    os.utime(path, (later, later))


def test_a_token_in_the_kubeconfig_is_a_bearer_header(tmp_path: Path) -> None:
    assert Credentials.for_entry(entry(tmp_path, token="abc")).get().authorization == "Bearer abc"


def test_username_and_password_are_basic_auth(tmp_path: Path) -> None:
    cred = Credentials.for_entry(entry(tmp_path, username="ann", password="pw")).get()
    assert cred.authorization == "Basic " + b64("ann:pw")


def test_certificate_data_is_decoded(tmp_path: Path) -> None:
    user = {"client-certificate-data": b64("-----BEGIN CERT"), "client-key-data": b64("-----BEGIN KEY")}
    cert = Credentials.for_entry(entry(tmp_path, **user)).get().client_cert
    assert cert is not None and (cert.cert_pem, cert.key_pem) == (b"-----BEGIN CERT", b"-----BEGIN KEY")


def test_certificate_data_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    user = {"client-certificate-data": "***", "client-key-data": b64("-----BEGIN KEY")}
    with pytest.raises(KubeconfigError, match="client-certificate-data is not valid base64"):
        Credentials.for_entry(entry(tmp_path, **user))


def test_a_token_file_relative_to_the_kubeconfig_is_read_again_when_it_changes(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    creds = Credentials.for_entry(entry(tmp_path, tokenFile="token"))
    assert creds.get().authorization == "Bearer one"
    touch_later(tmp_path / "token", "two\n")
    assert creds.get().authorization == "Bearer two"


def test_certificate_and_key_files_are_read_again_when_either_changes(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("-----BEGIN CERT1")
    (tmp_path / "c.key").write_text("-----BEGIN KEY1")
    creds = Credentials.for_entry(entry(tmp_path, **{"client-certificate": "c.crt", "client-key": "c.key"}))
    first = creds.get().client_cert
    assert first is not None and first.cert_pem == b"-----BEGIN CERT1"
    assert creds.get().client_cert is first  # unchanged files: the same material, no new pool
    touch_later(tmp_path / "c.key", "-----BEGIN KEY2")
    second = creds.get().client_cert
    assert second is not None and (second.cert_pem, second.key_pem) == (
        b"-----BEGIN CERT1",
        b"-----BEGIN KEY2",
    )


def test_a_missing_token_file_is_a_credential_error_naming_it(tmp_path: Path) -> None:
    creds = Credentials.for_entry(entry(tmp_path, tokenFile="gone"))
    with pytest.raises(CredentialError, match=f"context ctx: tokenFile {tmp_path / 'gone'} cannot be read"):
        creds.get()


def test_an_exec_token_and_certificate_files_are_merged(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("-----BEGIN CERT")
    (tmp_path / "c.key").write_text("-----BEGIN KEY")
    plugin = tmp_path / "plugin"
    out = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "t"},
    }
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(out)}'\n")
    plugin.chmod(0o755)
    user = {
        "client-certificate": "c.crt",
        "client-key": "c.key",
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        },
    }
    cred = Credentials.for_entry(entry(tmp_path, **user)).get()
    assert cred.authorization == "Bearer t"
    assert cred.client_cert is not None and cred.client_cert.cert_pem == b"-----BEGIN CERT"


def test_auth_providers_other_than_oidc_are_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(
        KubeconfigError, match=r"auth-provider 'gcp' is not supported.*gke-gcloud-auth-plugin"
    ):
        Credentials.for_entry(entry(tmp_path, **{"auth-provider": {"name": "gcp"}}))


# --------------------------------------------------------------------------- OIDC


def jwt(exp: float, sub: str = "ann") -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': sub, 'exp': int(exp)})}.sig"


class Issuer:
    """A local OIDC issuer: discovery document and a refresh_token grant."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        self.refresh_tokens = {"r1": "r2", "r2": "r3"}  # accepted -> the rotated one it returns
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    self._json({"issuer": issuer.url, "token_endpoint": f"{issuer.url}/token"})
                else:
                    self._json({}, 404)

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                issuer.requests.append((self.path, form, self.headers.get("Authorization")))
                token = form.get("refresh_token", [""])[0]
                if token not in issuer.refresh_tokens:
                    self._json({"error": "invalid_grant"}, 400)
                    return
                self._json(
                    {
                        "id_token": jwt(time.time() + 3600, sub=token),
                        "refresh_token": issuer.refresh_tokens[token],
                    }
                )

            def _json(self, doc: dict[str, Any], code: int = 200) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.server.shutdown()


def oidc(tmp_path: Path, issuer: Issuer, **config: Any) -> Credentials:
    base = {
        "idp-issuer-url": issuer.url,
        "client-id": "watcher",
        "client-secret": "s3cret",
        "refresh-token": "r1",
    }
    return Credentials.for_entry(
        entry(tmp_path, **{"auth-provider": {"name": "oidc", "config": {**base, **config}}})
    )


def test_a_valid_id_token_is_used_without_asking_the_issuer(tmp_path: Path, issuer: Issuer) -> None:
    token = jwt(time.time() + 600)
    assert oidc(tmp_path, issuer, **{"id-token": token}).get().authorization == f"Bearer {token}"
    assert issuer.requests == []


def test_an_expired_id_token_is_refreshed_with_the_refresh_token(tmp_path: Path, issuer: Issuer) -> None:
    creds = oidc(tmp_path, issuer, **{"id-token": jwt(time.time() - 5)})
    auth = creds.get().authorization
    assert auth is not None and '"sub": "r1"' in base64.urlsafe_b64decode(auth.split(".")[1] + "==").decode()
    (path, form, basic) = issuer.requests[0]
    assert path == "/token" and form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["r1"]
    assert basic == "Basic " + b64("watcher:s3cret")
    assert creds.get().authorization == auth  # cached: valid for an hour
    assert len(issuer.requests) == 1


def test_a_refused_id_token_is_refreshed_with_the_rotated_refresh_token(
    tmp_path: Path, issuer: Issuer
) -> None:
    creds = oidc(tmp_path, issuer, **{"id-token": jwt(time.time() - 5)})
    creds.get()
    creds.refresh(time.monotonic())  # the API server answered 401
    creds.get()
    assert [form["refresh_token"] for _, form, _ in issuer.requests] == [["r1"], ["r2"]]


def test_a_refused_refresh_is_a_credential_error_naming_the_issuer(tmp_path: Path, issuer: Issuer) -> None:
    creds = oidc(tmp_path, issuer, **{"refresh-token": "revoked"})
    with pytest.raises(CredentialError, match=rf"OIDC issuer {issuer.url}: .*HTTP 400"):
        creds.get()


def test_an_expired_id_token_without_a_refresh_token_says_what_is_missing(
    tmp_path: Path, issuer: Issuer
) -> None:
    creds = oidc(tmp_path, issuer, **{"id-token": jwt(time.time() - 5), "refresh-token": ""})
    with pytest.raises(CredentialError, match="cannot be refreshed"):
        creds.get()
