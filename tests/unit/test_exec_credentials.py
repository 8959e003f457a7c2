"""Exec credential plugins (watcher.credentials.ExecPlugin), run for real as small scripts."""

from __future__ import annotations

import json
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watcher.credentials import CredentialError, Credentials
from watcher.kubeconfig import ContextEntry, KubeconfigError

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"


def script(tmp_path: Path, body: str, name: str = "plugin") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def credential(
    token: str = "tok", *, api_version: str = V1, expires_in: float | None = None, **status: Any
) -> str:
    body: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": {"token": token, **status},
    }
    if expires_in is not None:
        when = datetime.now(UTC) + timedelta(seconds=expires_in)
        body["status"]["expirationTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(body)


def counting_plugin(tmp_path: Path, output: str) -> tuple[Path, Path]:
    """A plugin that appends a line to a file each run and prints ``output``."""
    runs = tmp_path / "runs"
    out = tmp_path / "out.json"
    out.write_text(output)
    return script(tmp_path, f'echo run >> "{runs}"\ncat "{out}"\n'), runs


def entry(tmp_path: Path, exec_: dict[str, Any], **user: Any) -> ContextEntry:
    return ContextEntry(
        name="ctx",
        cluster_name="c",
        cluster={"server": "https://127.0.0.1:1"},
        user={"exec": exec_, **user},
        namespace=None,
        base_dir=tmp_path,
    )


def exec_config(command: Path | str, api_version: str = V1, **more: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "command": str(command), "interactiveMode": "Never", **more}


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("api_version", [V1, V1BETA1])
def test_a_plugin_token_becomes_the_bearer_header(tmp_path: Path, api_version: str) -> None:
    plugin, _ = counting_plugin(tmp_path, credential("abc", api_version=api_version))
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin, api_version)))
    assert creds.get().authorization == "Bearer abc"


def test_the_token_is_cached_until_it_expires_then_the_plugin_runs_again(tmp_path: Path) -> None:
    plugin, ran = counting_plugin(tmp_path, credential("one", expires_in=7))
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin)))
    for _ in range(5):
        assert creds.get().authorization == "Bearer one"
    assert runs(ran) == 1
    (tmp_path / "out.json").write_text(credential("two", expires_in=3600))
    time.sleep(2.2)  # 7 s minus the 5 s margin
    assert creds.get().authorization == "Bearer two"
    assert creds.get().authorization == "Bearer two"
    assert runs(ran) == 2


def test_a_token_without_expiry_is_kept_until_the_server_refuses_it(tmp_path: Path) -> None:
    plugin, ran = counting_plugin(tmp_path, credential("one"))
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin)))
    assert creds.get().authorization == "Bearer one"
    used_at = time.monotonic()
    (tmp_path / "out.json").write_text(credential("two"))
    assert creds.get().authorization == "Bearer one"
    creds.refresh(used_at)  # a 401 to a request that used "one"
    assert creds.get().authorization == "Bearer two"
    assert runs(ran) == 2


def test_many_requests_refused_with_the_same_token_run_the_plugin_once(tmp_path: Path) -> None:
    plugin, ran = counting_plugin(tmp_path, credential("one"))
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin)))
    creds.get()
    used_at = time.monotonic()
    threads = [threading.Thread(target=lambda: (creds.refresh(used_at), creds.get())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs(ran) == 2


def test_args_env_and_exec_info_reach_the_plugin(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    plugin = script(
        tmp_path,
        f'printf "%s|%s|%s\\n" "$1 $2" "$GREETING" "$KUBERNETES_EXEC_INFO" > "{seen}"\n'
        f"echo '{credential()}'\n",
    )
    config = exec_config(
        plugin, args=["--region", "eu"], env=[{"name": "GREETING", "value": "hi"}], provideClusterInfo=True
    )
    Credentials.for_entry(entry(tmp_path, config)).get()
    args, greeting, info = seen.read_text().strip().split("|", 2)
    assert (args, greeting) == ("--region eu", "hi")
    info_doc = json.loads(info)
    assert info_doc["apiVersion"] == V1 and info_doc["kind"] == "ExecCredential"
    assert info_doc["spec"]["interactive"] is False
    assert info_doc["spec"]["cluster"]["server"] == "https://127.0.0.1:1"


def test_a_relative_command_with_a_slash_is_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script(tmp_path / "bin", f"echo '{credential('rel')}'\n")
    creds = Credentials.for_entry(entry(tmp_path, exec_config("./bin/plugin")))
    assert creds.get().authorization == "Bearer rel"


def test_a_client_certificate_from_the_plugin_is_used_for_tls(tmp_path: Path) -> None:
    out = json.dumps(
        {
            "apiVersion": V1,
            "kind": "ExecCredential",
            "status": {"clientCertificateData": "CERT", "clientKeyData": "KEY"},
        }
    )
    plugin, _ = counting_plugin(tmp_path, out)
    cred = Credentials.for_entry(entry(tmp_path, exec_config(plugin))).get()
    assert cred.authorization is None
    assert cred.client_cert is not None and (cred.client_cert.cert_pem, cred.client_cert.key_pem) == (
        b"CERT",
        b"KEY",
    )
    assert "KEY" not in repr(cred)


def test_a_missing_command_is_named_with_its_install_hint(tmp_path: Path) -> None:
    config = exec_config("no-such-plugin-xyz", installHint="Install it with: apt install no-such-plugin")
    creds = Credentials.for_entry(entry(tmp_path, config))
    with pytest.raises(CredentialError) as info:
        creds.get()
    assert "no-such-plugin-xyz" in str(info.value)
    assert "Install it with: apt install no-such-plugin" in str(info.value)


def test_a_hanging_plugin_is_killed_after_the_timeout(tmp_path: Path) -> None:
    plugin = script(tmp_path, "sleep 30\n")
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin)), exec_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CredentialError, match=r"timed out after 0.5s"):
        creds.get()
    assert time.monotonic() - started < 5


def test_a_failure_is_held_briefly_so_a_context_does_not_run_the_plugin_per_request(tmp_path: Path) -> None:
    ran = tmp_path / "runs"
    plugin = script(tmp_path, f'echo run >> "{ran}"\nexit 3\n')
    creds = Credentials.for_entry(entry(tmp_path, exec_config(plugin)))
    for _ in range(5):
        with pytest.raises(CredentialError, match="exited with status 3"):
            creds.get()
    assert runs(ran) == 1


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("this is not json {", "not JSON"),
        ('{"kind": "Something"}', "not an ExecCredential"),
        (credential(api_version=V1BETA1), "apiVersion client.authentication.k8s.io/v1beta1"),
        (json.dumps({"apiVersion": V1, "kind": "ExecCredential"}), "without status"),
        (json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": {}}), "neither a token"),
        (credential(clientCertificateData="C"), "only one of"),
        (credential(expirationTimestamp="tomorrow"), "not RFC 3339"),
    ],
)
def test_garbage_output_is_refused_without_repeating_it(tmp_path: Path, output: str, expected: str) -> None:
    plugin, _ = counting_plugin(tmp_path, output.replace('"tok"', '"SECRET-TOKEN"'))
    with pytest.raises(CredentialError, match=expected) as info:
        Credentials.for_entry(entry(tmp_path, exec_config(plugin))).get()
    assert "SECRET-TOKEN" not in str(info.value)


def test_a_failing_plugin_shows_the_last_line_of_its_stderr(tmp_path: Path) -> None:
    plugin = script(tmp_path, 'echo "starting" >&2\necho "session expired: run aws sso login" >&2\nexit 1\n')
    with pytest.raises(CredentialError, match="status 1: session expired: run aws sso login"):
        Credentials.for_entry(entry(tmp_path, exec_config(plugin))).get()


@pytest.mark.parametrize(
    ("exec_", "expected"),
    [
        ({"apiVersion": V1, "command": "x", "interactiveMode": "Always"}, "interactive terminal"),
        ({"apiVersion": V1, "command": "x"}, "interactiveMode must be"),
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}, "not supported"),
        ({"apiVersion": V1, "interactiveMode": "Never"}, "no command"),
    ],
)
def test_exec_entries_that_cannot_work_unattended_are_refused(
    tmp_path: Path, exec_: dict[str, Any], expected: str
) -> None:
    with pytest.raises(KubeconfigError, match=expected):
        Credentials.for_entry(entry(tmp_path, exec_))


def test_v1beta1_defaults_to_if_available_and_runs_non_interactively(tmp_path: Path) -> None:
    plugin, _ = counting_plugin(tmp_path, credential(api_version=V1BETA1))
    config = {"apiVersion": V1BETA1, "command": str(plugin)}
    assert Credentials.for_entry(entry(tmp_path, config)).get().authorization == "Bearer tok"
