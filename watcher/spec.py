"""The plugin spec: what a user writes under ``spec:`` in the CloudQuery source YAML.

Validated against a JSON schema (also served to the CLI through GetSpecSchema);
every error names the offending field.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from watcher.catalog import ALL_TABLES, excluded
from watcher.errors import ConfigError
from watcher.kubeconfig import default_kubeconfig
from watcher.resources import BY_TABLE, DERIVED_BY_TABLE
from watcher.state import CacheLocation, CacheUnusable

#: ``resources`` values of the original design whose table is not ``k8s_<value>``.
RESOURCE_ALIASES = {"crds": "k8s_custom_resources"}
#: Read when the spec omits the field (comma lists), as the original design did.
ENV_FIELDS = {"contexts": "K8S_CONTEXTS", "resources": "K8S_RESOURCES"}

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "k8s-watcher source spec",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "contexts": {
            "description": 'Kubeconfig context names to sync, or ["*"] for all of them. Default: $K8S_CONTEXTS, else all.',
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
        },
        "tables": {
            "description": "Tables to sync (names or glob patterns such as k8s_*roles*). Default: all.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
        },
        "resources": {
            "description": "Resources to sync by name (clusters, namespaces, pods, deployments, services, crds, "
            "or any table's name without k8s_); combined with tables. Default: $K8S_RESOURCES, else all.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
        },
        "discovery": {
            "description": "Also inventory every resource the API server serves (list and watch) that has no "
            "table of its own, into k8s_<group>_<plural> tables with generic columns. Default: true when "
            "tables and resources are not given, false otherwise.",
            "type": "boolean",
        },
        "custom_objects": {
            "description": "Custom objects as the generic k8s_custom_objects table, as one typed table per "
            "CRD (k8s_<group>_<plural>, columns from its schema and printer columns), or both.",
            "enum": ["generic", "typed", "both"],
        },
        "exclude": {
            "description": "Kinds not to watch or sync: resource names (events), resource keys "
            "(events.events.k8s.io) or table names, globs allowed.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
        },
        "database_url": {
            "description": "Accepted for configs of the original design and ignored: the destination writes.",
            "type": "string",
        },
        "kubeconfig": {
            "description": "Path of the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
            "type": "string",
        },
        "cache_path": {"description": "The SQLite cache file the daemon keeps warm.", "type": "string"},
        "cache_url": {
            "description": "The cache as a database URL instead of a file: postgresql://user:password@host/db "
            "(a cache shared by daemon replicas) or sqlite:///path. Wins over cache_path.",
            "type": "string",
            "pattern": "^[a-z0-9+]+://",
        },
        "incremental": {
            "description": "Emit only what changed (and deletions) since the last completed sync.",
            "type": "boolean",
        },
        "follow": {
            "description": "Keep the sync open after the snapshot or delta and send each change as the cache "
            "commits it, with the cursor written in order with the data (implies incremental).",
            "type": "boolean",
        },
        "cursor": {
            "description": "Where an incremental sync commits its cursor. 'stream' (default): as the sync's "
            "last row, which the destination commits with the rows before it (write_mode overwrite or "
            "overwrite-delete-stale). 'backend': written through the state backend at the end of the sync, "
            "for write_mode append (its syncs cannot carry the state table); a sync that fails after that "
            "write leaves the cursor past rows the destination never wrote.",
            "enum": ["stream", "backend"],
        },
        "max_staleness": {
            "description": "How old a context's cache may be without a live watch before a sync relists it (e.g. 90s, 10m, 1h).",
            "type": ["string", "number"],
        },
        "concurrency": {
            "description": "Parallel LIST requests per context during a relist.",
            "type": "integer",
            "minimum": 1,
            "maximum": 64,
        },
        "batch_max_rows": {
            "description": "Rows per Arrow record batch at most.",
            "type": "integer",
            "minimum": 1,
        },
    },
}


class SpecError(ConfigError):
    """The spec is invalid; the message names the field."""


def default_cache_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "k8s-watcher" / "cache.db"


def seconds(value: str | float | int, *, allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"500ms"``: the one
    duration parser of the spec and the daemon's options. ``ValueError`` says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 10m, got {value!r}")
    if isinstance(value, int | float):
        result = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 90s, 10m, 1h, 7d)")
        number, unit = float(match.group(1)), match.group(2) or "s"
        result = number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
        rule = "zero or a positive" if allow_zero else "a positive"
        raise ValueError(f"{value!r}: must be {rule}, finite duration")
    return result


def parse_duration(value: str | float | int, *, field_name: str) -> float:
    try:
        return seconds(value)
    except ValueError as exc:
        raise SpecError(f"{field_name}: {exc}") from None


@dataclass(frozen=True)
class Spec:
    contexts: tuple[str, ...] = ("*",)
    tables: tuple[str, ...] = ALL_TABLES
    kubeconfig: Path = field(default_factory=default_kubeconfig)
    cache_path: Path = field(default_factory=default_cache_path)
    cache_url: str | None = None
    incremental: bool = False
    follow: bool = False
    #: Where an incremental sync commits its cursor: "stream" or "backend" (see JSON_SCHEMA).
    cursor: str = "stream"
    max_staleness: float = 600.0
    concurrency: int = 4
    batch_max_rows: int = 20_000
    discovery: bool = True
    exclude: tuple[str, ...] = ()
    custom_objects: str = "both"

    @property
    def cache(self) -> CacheLocation:
        """Where the cache is: ``cache_url`` if given, else the ``cache_path`` file."""
        return CacheLocation.of(self.cache_url or self.cache_path)

    @classmethod
    def parse(
        cls, raw: bytes | str | dict[str, Any] | None, *, defaults: dict[str, Any] | None = None
    ) -> Spec:
        if raw in (None, b"", "", b"null", "null"):
            data: Any = {}
        elif isinstance(raw, dict):
            data = raw
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise SpecError(f"spec is not valid JSON: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SpecError(f"spec must be a mapping of fields, got {type(data).__name__}")
        written = data
        data = {**(defaults or {}), **_from_environment(data), **data}
        validator = jsonschema.Draft202012Validator(JSON_SCHEMA)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            raise SpecError("; ".join(_describe(e) for e in errors))
        # Only what the spec says: every default lives on the dataclass fields above.
        given: dict[str, Any] = {}
        if "contexts" in data:
            given["contexts"] = tuple(data["contexts"])
        exclude = tuple(data.get("exclude", ()))
        if "tables" in data or "resources" in data:
            where = "resources" if "resources" in written else ENV_FIELDS["resources"]
            resources = [_resource_table(r, where) for r in data.get("resources", ())]
            given["tables"] = _expand_tables([*data.get("tables", ()), *resources])
            given["discovery"] = False
        if exclude:
            given["exclude"] = exclude
            given["tables"] = tuple(t for t in given.get("tables", ALL_TABLES) if not _excluded(t, exclude))
        if "discovery" in data:
            given["discovery"] = bool(data["discovery"])
        if "custom_objects" in data:
            given["custom_objects"] = str(data["custom_objects"])
        if "database_url" in data:
            _warn_database_url()
        for key in ("kubeconfig", "cache_path"):
            if key in data:
                given[key] = Path(os.path.expanduser(data[key]))
        if "cache_url" in written and "cache_path" in written:
            raise SpecError("cache_path and cache_url name two caches: give one")
        if data.get("cache_url") and "cache_path" not in written:
            given["cache_url"] = str(data["cache_url"])
            try:
                CacheLocation.of(given["cache_url"])
            except CacheUnusable as exc:
                raise SpecError(str(exc)) from None
        if "incremental" in data:
            given["incremental"] = bool(data["incremental"])
        if data.get("follow"):
            if data.get("incremental") is False:
                raise SpecError("follow: needs incremental (a follow sync sends changes since its cursor)")
            given["follow"] = given["incremental"] = True
        if "cursor" in data:
            given["cursor"] = str(data["cursor"])
            if given["cursor"] == "backend" and given.get("follow"):
                raise SpecError(
                    "cursor: backend cannot be used with follow (a follow sync commits its cursor on the "
                    "stream, in order with its changes; use write_mode overwrite)"
                )
        if "max_staleness" in data:
            given["max_staleness"] = parse_duration(data["max_staleness"], field_name="max_staleness")
        for key in ("concurrency", "batch_max_rows"):
            if key in data:
                given[key] = int(data[key])
        return cls(**given)


def _excluded(table: str, exclude: tuple[str, ...]) -> bool:
    """Whether ``exclude`` names the table or the resource it is made from."""
    desc = BY_TABLE.get(table) or DERIVED_BY_TABLE.get(table, (None,))[0]
    return excluded(exclude, table, *(() if desc is None else (desc.plural, desc.key)))


def _from_environment(data: dict[str, Any]) -> dict[str, Any]:
    """Fields the spec omits, from ``K8S_CONTEXTS`` / ``K8S_RESOURCES`` (comma lists)."""
    found: dict[str, Any] = {}
    for key, var in ENV_FIELDS.items():
        items = [v.strip() for v in os.environ.get(var, "").split(",") if v.strip()]
        if key not in data and items:
            found[key] = items
    return found


def _resource_table(resource: str, where: str) -> str:
    table = RESOURCE_ALIASES.get(resource, f"k8s_{resource}")
    if table not in ALL_TABLES:
        known = sorted([*RESOURCE_ALIASES, *(t.removeprefix("k8s_") for t in ALL_TABLES)])
        raise SpecError(f"{where}: {resource!r} is not a resource (known: {', '.join(known)})")
    return table


@functools.cache
def _warn_database_url() -> None:
    """Once per process: a daemon parses the spec of every sync it serves."""
    log.warning(
        "spec.database_url is ignored: the CloudQuery destination writes the data "
        "(configure its connection_string instead)"
    )


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "spec"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(JSON_SCHEMA["properties"]))
        return (
            f"unknown field(s) in spec: {', '.join(extra)} (allowed: {', '.join(JSON_SCHEMA['properties'])})"
        )
    if error.validator == "minItems" and error.instance == []:
        return f"{where}: must not be empty"
    return f"{where}: {error.message}"


def _expand_tables(patterns: list[str]) -> tuple[str, ...]:
    chosen: list[str] = []
    for pattern in patterns:
        matched = [t for t in ALL_TABLES if fnmatch.fnmatchcase(t, pattern)]
        if not matched:
            raise SpecError(f"tables: {pattern!r} matches no table (known: {', '.join(ALL_TABLES)})")
        chosen.extend(t for t in matched if t not in chosen)
    return tuple(chosen)
