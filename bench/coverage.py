"""Coverage: what the official CloudQuery Kubernetes source v6.2.4 emits that k8s-watcher
does not, and the reverse. Prints a markdown report (kept in bench/coverage.md).

Computed, not typed: both plugins sync the same small test bed (``bench.peer.seed``)
through the real CLI into PostgreSQL through the real destination, and every column,
type and primary key comes from each database's ``information_schema``. An official
table is paired with ours by the Kubernetes resource it lists: for the official plugin,
the client-go call in its Go source (``CoreV1().Pods(``, in the pinned tarball); for
k8s-watcher, ``watcher.resources``. The pairing is checked against the uids both
databases hold, and the plugin's own docs (``docs/tables/*.md``) against the tables it
created.

    .venv/bin/python -m bench.coverage > bench/coverage.md
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.peer import CONTEXTS, create_database, official_sync, seed, sync_summary
from testbed.cluster import ControlPlanes, control_planes
from testbed.cq import (
    DESTINATION_VERSION,
    OFFICIAL_K8S_VERSION,
    destination_config,
    run_cloudquery,
    source_config,
)
from testbed.postgres import postgres_server
from watcher.resources import BY_TABLE, ResourceDescriptor

REPO = Path(__file__).resolve().parent.parent
TARBALL = Path(
    os.environ.get(
        "CLOUDQUERY_SRC_TARBALL",
        REPO.parent / "shared" / "third_party" / "cloudquery" / "cloudquery-src.tar.gz",
    )
)
PLUGIN_DIR = f"cloudquery-k8s-source-{OFFICIAL_K8S_VERSION}/plugins/source/k8s/"
#: Columns that hold the same thing under another name (official -> ours): CloudQuery's
#: name for the context, then core/v1 Event fields and their events.k8s.io/v1 names.
RENAMED = {
    "context": "context_name",
    "message": "note",
    "involved_object": "regarding",
    "reporting_component": "reporting_controller",
    "source": "deprecated_source",
    "first_timestamp": "deprecated_first_timestamp",
    "last_timestamp": "deprecated_last_timestamp",
    "count": "deprecated_count",
}

Columns = dict[str, str]  # column name -> PostgreSQL type (udt_name)


# --------------------------------------------------------------------------- the official source


@dataclass(frozen=True)
class OfficialSource:
    #: table -> (API group as client-go spells it, lowercased: "core", "apps", "rbac"...;
    #: version; plural)
    resources: dict[str, tuple[str, str, str]]
    #: table -> column names, from docs/tables/<table>.md
    docs: dict[str, list[str]]


_TABLE_NAME = re.compile(r'Name:\s+"(k8s_\w+)"')
_CLIENT_CALL = re.compile(r"\.([A-Z][a-z]+)(V\d\w*)\(\)\.([A-Z]\w+)\(")
_DOC_COLUMN = re.compile(r"^\|([a-z_0-9]+)(?: \(PK\))?\|`")


def read_official_source(tarball: Path = TARBALL) -> OfficialSource:
    """Each table's listed resource (Go source) and documented columns, from the tarball."""
    resources: dict[str, tuple[str, str, str]] = {}
    docs: dict[str, list[str]] = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            _, _, name = member.name.partition("/")
            if not name.startswith(PLUGIN_DIR) or not member.isfile():
                continue
            path = name.removeprefix(PLUGIN_DIR)
            if path.startswith("resources/services/") and path.endswith(".go") and "_test" not in path:
                text = _text(tar, member)
                table, call = _TABLE_NAME.search(text), _CLIENT_CALL.search(text)
                if table and call:
                    group, version, plural = (g.lower() for g in call.groups())
                    resources[table.group(1)] = (group, version, plural)
            elif re.fullmatch(r"docs/tables/k8s_\w+\.md", path):
                lines = _text(tar, member).splitlines()
                docs[Path(path).stem] = [m.group(1) for m in map(_DOC_COLUMN.match, lines) if m]
    return OfficialSource(resources, docs)


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read().decode()


def api_group(descriptor: ResourceDescriptor) -> str:
    """Our descriptor's API group, spelled like ``OfficialSource.resources``."""
    return descriptor.group.split(".")[0] or "core"


# --------------------------------------------------------------------------- the databases


@dataclass(frozen=True)
class Database:
    columns: dict[str, Columns]  # table -> columns
    primary_keys: dict[str, tuple[str, ...]]
    rows: dict[str, int]
    uids: dict[str, set[str]]
    #: table -> columns holding a value (not NULL, '', [] or {}) in at least one row
    filled: dict[str, set[str]]
    #: rows the CLI reported from the source: in all, and per table where known
    sent: int
    sent_by_table: dict[str, int]


def read_database(dsn: str, sent: int, sent_by_table: dict[str, int]) -> Database:
    with psycopg.connect(dsn) as conn:
        columns: dict[str, Columns] = {}
        for table, column, udt in conn.execute(
            "SELECT table_name, column_name, udt_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name LIKE 'k8s\\_%' ORDER BY table_name, ordinal_position"
        ):
            columns.setdefault(table, {})[column] = udt
        keys: dict[str, tuple[str, ...]] = {}
        for table, column in conn.execute(
            "SELECT k.table_name, k.column_name FROM information_schema.table_constraints c"
            " JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)"
            " WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = 'public'"
            " ORDER BY k.table_name, k.ordinal_position"
        ):
            keys[table] = (*keys.get(table, ()), column)
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in columns}
        uids = {t: {u for (u,) in conn.execute(f'SELECT uid::text FROM "{t}"')} for t in columns}
        filled = {t: _filled(conn, t, list(cols)) for t, cols in columns.items()}
    return Database(columns, keys, rows, uids, filled, sent, sent_by_table)


def _filled(conn: psycopg.Connection, table: str, columns: list[str]) -> set[str]:
    counts = ", ".join(
        f"""count(*) FILTER (WHERE "{c}" IS NOT NULL AND "{c}"::text NOT IN ('', '[]', '{{}}', 'null'))"""
        for c in columns
    )
    row = conn.execute(f'SELECT {counts} FROM "{table}"').fetchone()
    return {c for c, n in zip(columns, row, strict=True) if n}


def sync_both(planes: ControlPlanes, dsn: str, work: Path) -> tuple[Database, Database]:
    """The official plugin and k8s-watcher (registry local, cold cache) into two databases."""
    official_dsn, ours_dsn = create_database(dsn, "official"), create_database(dsn, "ours")
    figures = official_sync(planes, official_dsn, work / "official")
    spec = {
        "kubeconfig": str(planes.kubeconfig),
        "contexts": planes.names,
        "cache_path": str(work / "cache.db"),
    }
    result = run_cloudquery(
        ["sync"], workdir=work / "ours", configs=[source_config(spec), destination_config(ours_dsn)]
    )
    if result.returncode != 0:
        raise RuntimeError(f"k8s-watcher sync failed:\n{result.output[-3000:]}")
    official_sent = {t: int(stats["resources"]) for t, stats in figures["tables"].items()}
    return (
        read_database(official_dsn, figures["resources"], official_sent),
        read_database(ours_dsn, sync_summary(result)["resources"], {}),
    )


# --------------------------------------------------------------------------- the comparison


def pair_tables(source: OfficialSource) -> dict[str, tuple[str | None, str]]:
    """official table -> (our table for the same resource or None, how the two differ
    in API group or version)."""
    by_group = {(api_group(d), d.plural): d for d in BY_TABLE.values()}
    by_plural = {d.plural: d for d in BY_TABLE.values()}
    pairs: dict[str, tuple[str | None, str]] = {}
    for table, (group, version, plural) in sorted(source.resources.items()):
        descriptor = by_group.get((group, plural)) or by_plural.get(plural)
        if descriptor is None:
            pairs[table] = (None, "")
            continue
        notes = []
        if api_group(descriptor) != group:
            notes.append(f"API group {group} there, {api_group(descriptor)} ours")
        if descriptor.version != version:
            notes.append(f"{version} there, {descriptor.version} ours")
        pairs[table] = (descriptor.table, "; ".join(notes))
    return pairs


@dataclass(frozen=True)
class Diff:
    same: list[str]
    types: list[str]  # "column official/ours" where the PostgreSQL types differ
    renamed: list[str]  # "ours=official"
    only_official: list[str]
    only_ours: list[str]


def _data_columns(columns: Columns) -> Columns:
    return {c: t for c, t in columns.items() if not c.startswith("_cq_")}


def diff(official: Columns, ours: Columns) -> Diff:
    off, our = _data_columns(official), _data_columns(ours)
    same = [c for c in off if c in our]
    renamed = {RENAMED[c]: c for c in off if RENAMED.get(c) in our}
    for column in our:
        for prefixed in (f"spec_{column}", f"status_{column}"):
            if column not in off and column not in renamed and prefixed in off:
                renamed[column] = prefixed
    types = [f"{c} {off[c]}/{our[c]}" for c in same if off[c] != our[c]]
    types += [f"{o} {off[o]}/{our[c]}" for c, o in renamed.items() if off[o] != our[c]]
    return Diff(
        same=same,
        types=types,
        renamed=[f"{c}={o}" for c, o in renamed.items()],
        only_official=[c for c in off if c not in our and c not in renamed.values()],
        only_ours=[c for c in our if c not in off and c not in renamed],
    )


def _everywhere(lists: list[list[str]]) -> list[str]:
    """Items present in every list, in the first list's order."""
    counts = Counter(item for items in lists for item in set(items))
    return [item for item in lists[0] if counts[item] == len(lists)] if lists else []


def _names(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items) or "-"


def _only_official(columns: list[str], descriptor: ResourceDescriptor) -> str:
    nested = {p: [c for c in columns if c.startswith(f"{p}_")] for p in ("spec", "status")}
    rest = [c for c in columns if not any(c in cols for cols in nested.values())]
    parts = [f"`{p}_*` x{len(cols)}" for p, cols in nested.items() if cols]
    if parts:
        where = "not kept: metadata only" if descriptor.metadata_only else "inside our `spec`/`status` JSON"
        parts = [f"{' + '.join(parts)} ({where})"]
    return "; ".join(parts + ([_names(rest)] if rest else [])) or "-"


# --------------------------------------------------------------------------- the report


def report(source: OfficialSource, official: Database, ours: Database) -> str:
    pairs = pair_tables(source)
    paired = {t: p for t, (p, _) in pairs.items() if p is not None}
    diffs = {t: diff(official.columns[t], ours.columns[p]) for t, p in paired.items()}
    common_off = _everywhere([d.only_official for d in diffs.values()])
    common_ours = _everywhere([d.only_ours for d in diffs.values()])
    common_types = _everywhere([d.types for d in diffs.values()])
    common_renamed = _everywhere([d.renamed for d in diffs.values()])
    out = [
        f"Official CloudQuery k8s source {OFFICIAL_K8S_VERSION} vs k8s-watcher, both synced into PostgreSQL "
        f"by the real destination {DESTINATION_VERSION} from the same test bed "
        f"({len(CONTEXTS)} contexts); columns and keys from `information_schema` "
        "(`python -m bench.coverage`).",
        "",
        *_summary(pairs, official, ours, source),
        "",
        "In every paired table: official only "
        f"{_names(common_off)}; ours only {_names(common_ours)}; same field, other name "
        f"{_names(common_renamed)}; PostgreSQL type official/ours differs for {_names(common_types)}. "
        'The rows below leave these out. "Same field, other name" pairs our `x` with their `spec_x` or '
        "`status_x` by name (and the renames in `RENAMED`, bench/coverage.py); a type difference there can mean ours keeps "
        "only part of the field.",
        "",
        "| official table | k8s-watcher table | rows official / ours (same uids) | same name | "
        "same field, other name (ours=official) | only official | only ours |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for table, (ours_table, note) in pairs.items():
        if ours_table is None:
            group, version, plural = source.resources[table]
            out.append(
                f"| `{table}` | **missing** ({plural}, {group}/{version}) | {_rows(official, table)} / - | | | | |"
            )
            continue
        d = diffs[table]
        types = [t for t in d.types if t not in common_types]
        shared = len(official.uids[table] & ours.uids[ours_table])
        out.append(
            f"| `{table}` | `{ours_table}`{f' ({note})' if note else ''} "
            f"| {_rows(official, table)} / {ours.rows[ours_table]} ({shared}) "
            f"| {len(d.same)}{f'; types differ: {_names(types)}' if types else ''} "
            f"| {_names([r for r in d.renamed if r not in common_renamed])} "
            f"| {_only_official([c for c in d.only_official if c not in common_off], BY_TABLE[ours_table])} "
            f"| {_names([c for c in d.only_ours if c not in common_ours])} |"
        )
    return "\n".join(out) + "\n"


def _summary(
    pairs: dict[str, tuple[str | None, str]], official: Database, ours: Database, source: OfficialSource
) -> list[str]:
    ours_only = sorted(set(ours.columns) - {p for p, _ in pairs.values() if p})
    missing = [t for t, (p, _) in pairs.items() if p is None]
    return [
        f"- Tables: official {len(official.columns)}, ours {len(ours.columns)}; "
        f"{len(pairs) - len(missing)} official tables have a k8s-watcher table for the same resource, "
        f"{len(missing)} have none; ours with no official counterpart: {_names(ours_only)}.",
        f"- Primary keys: official {_key_shapes(official)}; ours {_key_shapes(ours)}.",
        f"- Rows: official sent {official.sent}, PostgreSQL kept {sum(official.rows.values())}; "
        f"ours sent {ours.sent}, kept {sum(ours.rows.values())}.",
        "- Columns in every table yet empty in every row here (columns both plugins leave empty "
        f"left out): official {_names(_never_filled(official, ours))}; "
        f"ours {_names(_never_filled(ours, official))}.",
        f"- CloudQuery columns: official {_names(_cq_columns(official))}; ours {_names(_cq_columns(ours))}.",
        f"- The plugin's docs (`docs/tables`, {len(source.docs)} tables) against what it created: "
        f"{_docs_check(source, official)}.",
    ]


def _rows(db: Database, table: str) -> str:
    """Rows in PostgreSQL, and the rows sent when fewer were kept."""
    sent = db.sent_by_table.get(table, db.rows[table])
    return str(db.rows[table]) if sent == db.rows[table] else f"{db.rows[table]} (of {sent} sent)"


def _key_shapes(db: Database) -> str:
    shapes = Counter(db.primary_keys.get(t, ()) for t in db.columns)
    return ", ".join(f"({', '.join(k) or 'none'}) in {n} tables" for k, n in shapes.most_common())


def _never_filled(db: Database, other: Database) -> list[str]:
    """Columns every table of ``db`` has that hold no value in any row, leaving out those
    ``other`` has and leaves empty too (nothing on the test bed sets them)."""

    def empty(d: Database, column: str) -> bool:
        return not any(column in cols for cols in d.filled.values())

    def also_empty_in_other(column: str) -> bool:
        return any(column in cols for cols in other.columns.values()) and empty(other, column)

    everywhere = _everywhere([list(cols) for cols in db.columns.values()])
    return [c for c in everywhere if empty(db, c) and not also_empty_in_other(c)]


def _cq_columns(db: Database) -> list[str]:
    return sorted({c for cols in db.columns.values() for c in cols if c.startswith("_cq_")})


def _docs_check(source: OfficialSource, official: Database) -> str:
    problems = [f"`{t}` not created" for t in sorted(set(source.docs) - set(official.columns))]
    problems += [f"`{t}` not documented" for t in sorted(set(official.columns) - set(source.docs))]
    for table in sorted(set(source.docs) & set(official.columns)):
        documented, created = set(source.docs[table]), set(official.columns[table])
        extra, absent = (
            sorted(created - documented - {"_cq_sync_time", "_cq_source_name"}),
            sorted(documented - created),
        )
        if extra or absent:
            problems.append(
                f"`{table}` created but undocumented {_names(extra)}, documented but absent {_names(absent)}"
            )
    return "; ".join(problems) or "the same tables and columns"


def main() -> int:
    source = read_official_source()
    with (
        tempfile.TemporaryDirectory(prefix="k8s-watcher-coverage-") as tmp,
        control_planes(CONTEXTS, workdir=Path(tmp) / "kube") as planes,
        postgres_server() as pg,
    ):
        seed(planes)
        official, ours = sync_both(planes, pg.dsn, Path(tmp))
    sys.stdout.write(report(source, official, ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
