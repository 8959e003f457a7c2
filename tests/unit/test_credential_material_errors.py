"""Bad credential material in a kubeconfig: every error names the context and the field,
never a raw ``binascii.Error`` or ``OSError``. Data fields and the OIDC issuer's CA are
refused when the client is built (a :class:`KubeconfigError`: the daemon reports the
context and runs the others); files are read when a request needs them (a
:class:`CredentialError`)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from testbed.certs import ClientCa
from watcher.credentials import CredentialError, Credentials
from watcher.kubeconfig import ContextEntry, KubeconfigError

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def entry(tmp_path: Path, **user: Any) -> ContextEntry:
    return ContextEntry(
        name="prod", cluster_name="c", cluster={"server": "https://127.0.0.1:1"}, user=user,
        namespace=None, base_dir=tmp_path,
    )  # fmt: skip


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def oidc(**config: Any) -> dict[str, Any]:
    return {"auth-provider": {"name": "oidc", "config": {"idp-issuer-url": "https://issuer", **config}}}


# (user entry, files to write, the message expected)
BUILD_ERRORS = {
    "oidc ca data not base64": (
        oidc(**{"idp-certificate-authority-data": "not base64!"}),
        {},
        "context prod: auth-provider oidc idp-certificate-authority-data is not valid base64",
    ),
    "oidc ca data not pem": (
        oidc(**{"idp-certificate-authority-data": b64("just text")}),
        {},
        "context prod: auth-provider oidc idp-certificate-authority-data is not PEM",
    ),
    "oidc ca data a broken pem": (
        oidc(**{"idp-certificate-authority-data": b64(PEM)}),
        {},
        "context prod: auth-provider oidc idp-certificate-authority-data holds no usable certificate",
    ),
    "oidc ca file missing": (
        oidc(**{"idp-certificate-authority": "gone.crt"}),
        {},
        "context prod: auth-provider oidc idp-certificate-authority {dir}/gone.crt cannot be read: "
        "No such file or directory",
    ),
    "oidc ca file a directory": (
        oidc(**{"idp-certificate-authority": "d"}),
        {"d/": ""},
        "context prod: auth-provider oidc idp-certificate-authority {dir}/d cannot be read: Is a directory",
    ),
    "oidc ca file not pem": (
        oidc(**{"idp-certificate-authority": "ca.der"}),
        {"ca.der": "\x30\x82 binary"},
        "context prod: auth-provider oidc idp-certificate-authority {dir}/ca.der is not PEM",
    ),
    "client cert data not base64": (
        {"client-certificate-data": "%%%", "client-key-data": b64("-----BEGIN KEY")},
        {},
        "context prod: client-certificate-data is not valid base64",
    ),
    "client key data not base64": (
        {"client-certificate-data": b64(PEM), "client-key-data": "%%%"},
        {},
        "context prod: client-key-data is not valid base64",
    ),
    "client key data not pem": (
        {"client-certificate-data": b64(PEM), "client-key-data": b64(b"\x30\x82 der")},
        {},
        "context prod: client-key-data is not PEM",
    ),
}

# (user entry, files to write, the message expected at the first request)
REQUEST_ERRORS = {
    "token file missing": (
        {"tokenFile": "gone"},
        {},
        "context prod: tokenFile {dir}/gone cannot be read: No such file or directory",
    ),
    "token file a directory": (
        {"tokenFile": "d"},
        {"d/": ""},
        "context prod: tokenFile {dir}/d cannot be read: Is a directory",
    ),
    "token file empty": ({"tokenFile": "t"}, {"t": "\n"}, "context prod: tokenFile {dir}/t is empty"),
    "client cert file missing": (
        {"client-certificate": "c.crt", "client-key": "c.key"},
        {"c.key": "-----BEGIN KEY"},
        "context prod: client-certificate {dir}/c.crt cannot be read: No such file or directory",
    ),
    "client key file unreadable": (
        {"client-certificate": "c.crt", "client-key": "c.key"},
        {"c.crt": PEM, "c.key/": ""},
        "context prod: client-key {dir}/c.key cannot be read: Is a directory",
    ),
    "client key file not pem": (
        {"client-certificate": "c.crt", "client-key": "c.key"},
        {"c.crt": PEM, "c.key": "\x30\x82"},
        "context prod: client-key {dir}/c.key is not PEM",
    ),
}


def write(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(text)


@pytest.mark.parametrize("case", BUILD_ERRORS)
def test_bad_data_or_ca_is_refused_when_the_client_is_built_naming_context_and_field(
    tmp_path: Path, case: str
) -> None:
    user, files, message = BUILD_ERRORS[case]
    write(tmp_path, files)
    with pytest.raises(KubeconfigError) as info:
        Credentials.for_entry(entry(tmp_path, **user))
    assert str(info.value).startswith(message.format(dir=tmp_path)), str(info.value)
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, KubeconfigError)


@pytest.mark.parametrize("case", REQUEST_ERRORS)
def test_a_bad_credential_file_fails_the_request_naming_context_and_field(tmp_path: Path, case: str) -> None:
    user, files, message = REQUEST_ERRORS[case]
    write(tmp_path, files)
    creds = Credentials.for_entry(entry(tmp_path, **user))
    with pytest.raises(CredentialError, match="^" + re.escape(message.format(dir=tmp_path))):
        creds.get()


def test_a_good_oidc_ca_as_file_or_data_is_accepted(tmp_path: Path) -> None:
    ca = ClientCa.create()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    Credentials.for_entry(entry(tmp_path, **oidc(**{"idp-certificate-authority": "ca.crt"})))
    Credentials.for_entry(entry(tmp_path, **oidc(**{"idp-certificate-authority-data": b64(ca.pem)})))
