"""A cluster's TLS material in a kubeconfig: refused when the client is built, with a
message that names the context and the field (never a bare OpenSSL error)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.certs import ClientCa
from watcher.kube import KubeClient
from watcher.kubeconfig import KubeconfigError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None) -> KubeClient:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", **cluster}}],
                "users": [{"name": "u", "user": user or {"token": "t"}}],
                "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return KubeClient(path, "prod")


def test_certificate_authority_data_that_is_not_pem_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="context prod: certificate-authority-data is not PEM"):
        client(tmp_path, {"certificate-authority-data": b64(b"\xff\xfe not a certificate")})


def test_a_missing_certificate_authority_file_names_the_field_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(
        KubeconfigError, match=f"context prod: certificate-authority {missing} cannot be read"
    ):
        client(tmp_path, {"certificate-authority": str(missing)})


def test_a_client_certificate_with_another_key_is_refused_at_build_time(tmp_path: Path) -> None:
    ca = ClientCa.create()
    cert, _key = ca.issue("alice")
    _cert, other_key = ca.issue("bob")
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(other_key)}
    with pytest.raises(KubeconfigError, match="context prod: client-certificate and client-key"):
        client(tmp_path, {"insecure-skip-tls-verify": True}, user)
