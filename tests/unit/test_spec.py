"""Spec parsing and validation, and durations (watcher.spec)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

import watcher.spec as spec_module
from watcher.catalog import ALL_TABLES, CLUSTERS_TABLE, HISTORY_TABLES
from watcher.resources import (
    CUSTOM_OBJECTS_TABLE,
)
from watcher.spec import Spec, SpecError, parse_duration


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Deterministic defaults: KUBECONFIG and XDG_STATE_HOME point into tmp_path."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc.yaml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


@pytest.mark.parametrize("raw", [None, b"", "", b"null", "null", {}, b"{}"])
def test_an_empty_spec_takes_every_default(clean_env: Path, raw: Any) -> None:
    spec = Spec.parse(raw)
    assert spec.contexts == ("*",)
    assert spec.tables == ALL_TABLES
    assert spec.tables[0] == CLUSTERS_TABLE and spec.tables[-3:] == (CUSTOM_OBJECTS_TABLE, *HISTORY_TABLES)
    assert spec.kubeconfig == clean_env / "kc.yaml"
    assert spec.cache_path == clean_env / "state" / "k8s-watcher" / "cache.db"
    assert spec.incremental is False
    assert spec.max_staleness == 600.0
    assert spec.concurrency == 4
    assert spec.batch_max_rows == 20_000


def test_a_spec_parses_from_json_bytes_or_str_and_expands_home(clean_env: Path) -> None:
    raw = orjson.dumps(
        {
            "contexts": ["dev", "prod"],
            "tables": ["k8s_pods"],
            "kubeconfig": "~/kc",
            "cache_path": "/var/tmp/c.db",
            "incremental": True,
            "max_staleness": "90s",
            "concurrency": 8,
            "batch_max_rows": 100,
        }
    )
    spec = Spec.parse(raw)
    assert spec.contexts == ("dev", "prod")
    assert spec.tables == ("k8s_pods",)
    assert spec.kubeconfig == Path.home() / "kc"
    assert spec.cache_path == Path("/var/tmp/c.db")
    assert spec.incremental is True
    assert spec.max_staleness == 90.0
    assert spec.concurrency == 8
    assert spec.batch_max_rows == 100
    # str input goes through the same path as bytes
    assert Spec.parse(raw.decode()) == spec


def test_fields_in_the_spec_override_the_callers_defaults(clean_env: Path) -> None:
    spec = Spec.parse({"concurrency": 2}, defaults={"concurrency": 9, "incremental": True})
    assert spec.concurrency == 2
    assert spec.incremental is True


def test_table_globs_expand_in_table_order_without_duplicates(clean_env: Path) -> None:
    spec = Spec.parse({"tables": ["k8s_pod*", "k8s_pods", "k8s_clusters"]})
    assert spec.tables == (
        "k8s_pods", "k8s_pod_containers", "k8s_poddisruptionbudgets", "k8s_podtemplates", "k8s_clusters",
    )  # fmt: skip
    rbac = Spec.parse({"tables": ["k8s_*role*"]}).tables
    assert set(rbac) == {"k8s_roles", "k8s_rolebindings", "k8s_clusterroles", "k8s_clusterrolebindings"}
    assert Spec.parse({"tables": ["*"]}).tables == ALL_TABLES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"bogus": 1}', "unknown field(s) in spec: bogus"),
        (b'{"contexts": []}', "contexts: must not be empty"),
        (b'{"tables": []}', "tables: must not be empty"),
        (b'{"max_staleness": "soon"}', "max_staleness: 'soon' is not a duration"),
        (b'{"max_staleness": 0}', "max_staleness: 0: must be a positive, finite duration"),
        (b'{"max_staleness": "-5m"}', "max_staleness: '-5m' is not a duration"),
        (b'{"max_staleness": true}', "max_staleness"),
        (b'{"tables": ["k8s_nope"]}', "tables: 'k8s_nope' matches no table"),
        (b'{"concurrency": 0}', "concurrency"),
        (b'{"concurrency": 65}', "concurrency"),
        (b"[1, 2]", "spec must be a mapping of fields, got list"),
        (b'"just a string"', "spec must be a mapping of fields, got str"),
        (b"{not json", "spec is not valid JSON"),
    ],
)
def test_an_invalid_spec_is_refused_with_the_field_named(clean_env: Path, raw: bytes, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec.parse(raw)
    assert expected in str(info.value)


def test_an_unknown_table_error_lists_the_known_tables(clean_env: Path) -> None:
    with pytest.raises(SpecError, match=r"known: .*k8s_pods"):
        Spec.parse({"tables": ["k8s_pods", "nope_*"]})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90", 90.0), (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0),
     ("500ms", 0.5), (" 2 m ", 120.0), ("1.5m", 90.0)],
)  # fmt: skip
def test_durations_are_seconds_or_numbers_with_a_unit(value: Any, seconds: float) -> None:
    assert parse_duration(value, field_name="f") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", 0, -1, True, False, "0s", "", "10 days", "-1s", 0.0])
def test_durations_refuse_zero_negatives_booleans_and_unknown_units(value: Any) -> None:
    with pytest.raises(SpecError, match=r"^f: "):
        parse_duration(value, field_name="f")


def test_nan_is_not_a_duration_even_from_a_json_spec() -> None:
    """NaN is not a duration: every comparison with it is False, so a NaN staleness
    would silently mean "never stale" and "daemon never alive"."""
    with pytest.raises(SpecError):
        parse_duration(float("nan"), field_name="max_staleness")
    # json.loads accepts the NaN literal, so a spec can carry one
    with pytest.raises(SpecError, match="max_staleness"):
        Spec.parse(b'{"max_staleness": NaN}')


# --------------------------------------------------------------------------- the original design's configs


def test_resources_of_the_original_design_map_to_their_tables(clean_env: Path) -> None:
    spec = Spec.parse({"resources": ["clusters", "namespaces", "pods", "deployments", "services", "crds"]})
    assert spec.tables == (
        "k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_deployments", "k8s_services", "k8s_custom_resources",
    )  # fmt: skip


def test_resources_combine_with_tables_without_duplicates(clean_env: Path) -> None:
    spec = Spec.parse({"tables": ["k8s_*roles", "k8s_pods"], "resources": ["pods", "configmaps"]})
    assert spec.tables == ("k8s_roles", "k8s_clusterroles", "k8s_pods", "k8s_configmaps")


def test_an_unknown_resource_is_refused_naming_where_it_came_from(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SpecError, match=r"resources: 'gadgets' is not a resource \(known: .*crds"):
        Spec.parse({"resources": ["pods", "gadgets"]})
    monkeypatch.setenv("K8S_RESOURCES", "pods,gadgets")
    with pytest.raises(SpecError, match="K8S_RESOURCES: 'gadgets' is not a resource"):
        Spec.parse({})


def test_contexts_and_resources_come_from_the_environment_when_the_spec_omits_them(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_CONTEXTS", " dev, prod ,")
    monkeypatch.setenv("K8S_RESOURCES", "pods,crds")
    from_env = Spec.parse({}, defaults={"contexts": ["daemon-ctx"]})
    assert from_env.contexts == ("dev", "prod")
    assert from_env.tables == ("k8s_pods", "k8s_custom_resources")
    written = Spec.parse({"contexts": ["stage"], "resources": ["services"]})
    assert written.contexts == ("stage",)
    assert written.tables == ("k8s_services",)


def test_database_url_is_accepted_ignored_and_warned_about_once(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watcher.spec")
    spec_module._warn_database_url.cache_clear()
    first = Spec.parse({"database_url": "postgres://u@db/k8s"})
    Spec.parse({"database_url": "postgres://u@db/k8s"})
    assert first == Spec.parse({})
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "spec.database_url is ignored: the CloudQuery destination writes the data "
        "(configure its connection_string instead)"
    ]


# --------------------------------------------------------------------------- discovery and exclusions


def test_discovery_is_on_for_an_unrestricted_inventory_and_off_when_tables_are_chosen(
    clean_env: Path,
) -> None:
    assert Spec.parse({}).discovery is True
    assert Spec.parse({"tables": ["k8s_pods"]}).discovery is False
    assert Spec.parse({"resources": ["pods"]}).discovery is False
    assert Spec.parse({"tables": ["k8s_pods"], "discovery": True}).discovery is True
    assert Spec.parse({"discovery": False}).discovery is False


def test_exclude_drops_tables_by_resource_name_key_or_table_glob(clean_env: Path) -> None:
    spec = Spec.parse({"exclude": ["events", "replicasets.apps", "k8s_*roles", "pods"]})
    assert spec.exclude == ("events", "replicasets.apps", "k8s_*roles", "pods")
    gone = {
        "k8s_events",
        "k8s_replicasets",
        "k8s_roles",
        "k8s_clusterroles",
        "k8s_pods",
        "k8s_pod_containers",
    }
    assert set(ALL_TABLES) - set(spec.tables) == gone
    assert spec.discovery is True
    assert Spec.parse({"tables": ["k8s_pods", "k8s_events"], "exclude": ["events"]}).tables == ("k8s_pods",)


def test_custom_objects_are_generic_typed_or_both_and_both_by_default(clean_env: Path) -> None:
    assert Spec.parse({}).custom_objects == "both"
    assert Spec.parse({"custom_objects": "typed"}).custom_objects == "typed"
    with pytest.raises(SpecError, match="custom_objects: 'tabular' is not one of"):
        Spec.parse({"custom_objects": "tabular"})


def test_cache_url_names_a_database_cache_and_wins_over_the_callers_cache_path(clean_env: Path) -> None:
    url = "postgresql://watcher:pw@db.internal:5432/inventory"
    spec = Spec.parse({"cache_url": url}, defaults={"cache_path": str(clean_env / "daemon.db")})
    assert spec.cache_url == url
    assert not spec.cache.is_sqlite and spec.cache.url.drivername == "postgresql+psycopg"
    assert str(spec.cache) == "postgresql+psycopg://watcher:***@db.internal:5432/inventory"
    # A daemon's default cache_url gives way to a cache_path the user wrote.
    mine = Spec.parse({"cache_path": str(clean_env / "mine.db")}, defaults={"cache_url": url})
    assert mine.cache.is_sqlite and mine.cache.path == clean_env / "mine.db"
    assert Spec.parse({"cache_url": f"sqlite:///{clean_env}/x.db"}).cache.path == clean_env / "x.db"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"cache_url": "postgresql://h/db", "cache_path": "/tmp/c.db"},
            "cache_path and cache_url name two caches",
        ),
        ({"cache_url": "mysql://h/db"}, "cache_url mysql://h/db: the cache lives in a SQLite file"),
        ({"cache_url": "not a url"}, "cache_url"),
    ],
)
def test_a_bad_cache_url_is_refused(clean_env: Path, raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        Spec.parse(raw)


def test_the_cursor_goes_on_the_stream_unless_the_spec_says_backend(clean_env: Path) -> None:
    assert Spec.parse({"incremental": True}).cursor == "stream"
    assert Spec.parse({"incremental": True, "cursor": "backend"}).cursor == "backend"
    with pytest.raises(SpecError, match="cursor: 'state' is not one of"):
        Spec.parse({"incremental": True, "cursor": "state"})
    with pytest.raises(SpecError, match="cursor: backend cannot be used with follow"):
        Spec.parse({"follow": True, "cursor": "backend"})
