"""What is kept of an object before it is cached: no managedFields, no last-applied, no secret data."""

from __future__ import annotations

from tests.unit.builders import CMS, SECRETS, meta
from watcher.tables import (
    LAST_APPLIED,
    extract_row,
    sanitize,
)


def test_sanitize_drops_managed_fields_and_last_applied_and_leaves_the_input_alone() -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(
            managedFields=[{"manager": "kubectl"}],
            annotations={LAST_APPLIED: '{"data":{"password":"x"}}', "team": "infra"},
        ),
        "data": {"k": "v"},
    }
    clean = sanitize(obj, CMS)
    assert "managedFields" not in clean["metadata"]
    assert clean["metadata"]["annotations"] == {"team": "infra"}
    assert clean["data"] == {"k": "v"}
    assert clean["metadata"]["name"] == "obj"
    # the input is not modified
    assert "managedFields" in obj["metadata"]
    assert LAST_APPLIED in obj["metadata"]["annotations"]


def test_sanitize_keeps_annotations_that_have_no_last_applied() -> None:
    obj = {"metadata": meta(annotations={"a": "1"})}
    assert sanitize(obj, CMS)["metadata"]["annotations"] == {"a": "1"}


def test_a_sanitized_secret_keeps_no_data_not_even_in_last_applied() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta(annotations={LAST_APPLIED: '{"stringData":{"pw":"hunter2"}}'}, managedFields=[{}]),
        "data": {"pw": "aHVudGVyMg=="},
        "stringData": {"pw": "hunter2"},
    }
    clean = sanitize(secret, SECRETS)
    assert set(clean) == {"apiVersion", "kind", "metadata"}
    assert clean["apiVersion"] == "v1" and clean["kind"] == "Secret"
    assert "managedFields" not in clean["metadata"]
    assert LAST_APPLIED not in (clean["metadata"].get("annotations") or {})
    row = extract_row(clean, SECRETS)
    assert b"hunter2" not in row and b"aHVudGVyMg==" not in row
