"""Reading kubeconfig files and resolving contexts (watcher.kubeconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from watcher.kubeconfig import KubeconfigError, context_names, read_kubeconfig, resolve_contexts


def _kubeconfig(tmp_path: Path, names: list[str]) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in names],
        "current-context": names[0] if names else "",
    }
    p = tmp_path / "config"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_a_missing_kubeconfig_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KubeconfigError, match="does not exist") as info:
        read_kubeconfig(missing)
    assert str(missing) in str(info.value)


def test_a_kubeconfig_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    directory = tmp_path / "a-dir"
    directory.mkdir()
    with pytest.raises(KubeconfigError, match="cannot be read"):
        read_kubeconfig(directory)


def test_a_kubeconfig_of_invalid_yaml_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_text("contexts: [unclosed\n  - : :")
    with pytest.raises(KubeconfigError, match="not valid YAML"):
        read_kubeconfig(p)


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just a string\n", "contexts: {a: 1}\n"])
def test_a_kubeconfig_that_is_not_a_mapping_of_lists_is_malformed(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad"
    p.write_text(text)
    with pytest.raises(KubeconfigError, match="malformed"):
        read_kubeconfig(p)


def test_context_names_come_in_file_order(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["zeta", "alpha", "mid"])
    assert read_kubeconfig(p)["kind"] == "Config"
    assert context_names(p) == ["zeta", "alpha", "mid"]


def test_context_names_skip_nameless_entries(tmp_path: Path) -> None:
    p = tmp_path / "config"
    p.write_text(yaml.safe_dump({"contexts": [{"name": "a"}, {"context": {}}, "junk", {"name": "b"}]}))
    assert context_names(p) == ["a", "b"]
    p.write_text("kind: Config\n")
    assert context_names(p) == []


def test_star_resolves_to_every_context_and_names_keep_the_order_given(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["dev", "prod", "stage"])
    assert resolve_contexts(p, ["*"]) == ["dev", "prod", "stage"]
    assert resolve_contexts(p, ["prod"]) == ["prod"]
    assert resolve_contexts(p, ["stage", "dev"]) == ["stage", "dev"]


def test_unknown_contexts_are_refused_with_those_available_and_the_file(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["dev", "prod"])
    with pytest.raises(KubeconfigError) as info:
        resolve_contexts(p, ["dev", "qa", "uat"])
    msg = str(info.value)
    assert "qa, uat" in msg
    assert "available: dev, prod" in msg
    assert str(p) in msg


def test_without_contexts_star_resolves_to_none_and_a_name_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "config"
    p.write_text("contexts: []\n")
    assert resolve_contexts(p, ["*"]) == []
    with pytest.raises(KubeconfigError, match=r"available: none"):
        resolve_contexts(p, ["dev"])
