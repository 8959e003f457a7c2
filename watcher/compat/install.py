"""``k8s-watcher compat install``: create or upgrade the compat views in one transaction
(and ``compat uninstall``).

``CREATE OR REPLACE VIEW`` cannot change a column's type or position, so every compat
view is dropped and created again; the views of users built on them (the official
plugin's ``k8s_resources``, a Grafana panel's view) are saved first and created again
after, with their grants, so an upgrade breaks nothing and nothing is ever half done: a
failure rolls everything back. Concurrent installs queue on an advisory lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from watcher.compat import SQL_DIR, View, compat_version, views

#: Where the installed version is recorded, in the compat views' schema.
VERSION_TABLE = "k8s_watcher_compat"
_LOCK = 0x6B38_7363  # advisory lock id shared by every install


class CompatError(RuntimeError):
    """The compat views cannot be installed as asked (the message says why)."""


@dataclass(frozen=True)
class Installed:
    schema: str
    version: str
    previous: str | None
    views: int
    #: The users' views on the compat views that were saved and created again.
    dependents: tuple[str, ...]


_DEPENDENTS = """
WITH RECURSIVE deps(oid) AS (
    SELECT DISTINCT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = ANY(%(roots)s) AND r.ev_class <> d.refobjid
  UNION
    SELECT r.ev_class FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class <> d.refobjid
)
SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid)
FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid <> ALL(%(roots)s) ORDER BY c.oid
"""


def _grants(conn: psycopg.Connection, oid: int, target: sql.Composable) -> list[sql.Composed]:
    """GRANT statements that give ``target`` the privileges relation ``oid`` has now."""
    rows = conn.execute(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END"
        " FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s AND a.grantee <> c.relowner",
        (oid,),
    ).fetchall()
    return [
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privilege), target, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")
        )
        for privilege, grantee in rows
    ]


def install(
    dsn: str, *, schema: str = "public", source_schema: str = "public", sql_dir: Path = SQL_DIR
) -> Installed:
    """Install or upgrade every compat view in ``schema``, over this project's tables in
    ``source_schema`` (where the destination writes them); ``sql_dir``: the views' SQL."""
    items = views(sql_dir)
    version = compat_version(items)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        existing = _relations(conn, schema, [v.name for v in items])
        tables = sorted(name for name, (_, kind) in existing.items() if kind != "v")
        if tables:
            raise CompatError(
                f"{schema} already holds tables named like the official plugin's ({', '.join(tables[:3])}"
                f"{', ...' if len(tables) > 3 else ''}): the official plugin's own tables? Install the views"
                " in another schema (--schema) or drop those tables"
            )
        missing = _missing_sources(conn, source_schema, items)
        if missing:
            raise CompatError(
                f"this project's tables are not in {source_schema} yet ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): run a sync into this database first"
            )
        previous = _previous_version(conn, schema)
        # Definitions come out schema-qualified when nothing but pg_catalog is visible.
        conn.execute("SET LOCAL search_path = pg_catalog")
        roots = [oid for oid, _ in existing.values()]
        saved = []
        for oid, nsp, name, relkind, definition in conn.execute(_DEPENDENTS, {"roots": roots}).fetchall():
            target = sql.Identifier(nsp, name)
            head = "CREATE MATERIALIZED VIEW {} AS " if relkind == "m" else "CREATE VIEW {} AS "
            saved.append((f"{nsp}.{name}", sql.SQL(head).format(target) + sql.SQL(definition.rstrip().rstrip(";")),
                          _grants(conn, oid, target)))  # fmt: skip
        grants = {
            name: _grants(conn, oid, sql.Identifier(schema, name)) for name, (oid, _) in existing.items()
        }
        for name in existing:
            conn.execute(sql.SQL("DROP VIEW {} CASCADE").format(sql.Identifier(schema, name)))
        conn.execute(sql.SQL("SET LOCAL search_path = {}, pg_catalog").format(sql.Identifier(source_schema)))
        for view in items:
            target = sql.Identifier(schema, view.name)
            conn.execute(sql.SQL("CREATE VIEW {} AS ").format(target) + sql.SQL(view.select))
            conn.execute(
                sql.SQL("COMMENT ON VIEW {} IS {}").format(
                    target,
                    sql.Literal(f"k8s-watcher compat {version}: the official CloudQuery k8s source's table"),
                )
            )
            for grant in grants.get(view.name, []):
                conn.execute(grant)
        for name, create, view_grants in saved:
            try:
                with conn.transaction():  # a savepoint, so that the error can be told
                    conn.execute(create)
            except psycopg.Error as exc:
                raise CompatError(
                    f"the view {name}, built on the compat views, does not fit the new ones"
                    f" ({str(exc).strip()}); nothing was changed: adapt or drop it, then install again"
                ) from exc
            for grant in view_grants:
                conn.execute(grant)
        _index_uids(conn, source_schema, items)
        _record(conn, schema, version, len(items))
    return Installed(schema, version, previous, len(items), tuple(name for name, _, _ in saved))


def _relations(conn: psycopg.Connection, schema: str, names: list[str]) -> dict[str, tuple[int, str]]:
    rows = conn.execute(
        "SELECT c.relname, c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s)",
        (schema, names),
    ).fetchall()
    return {name: (oid, kind) for name, oid, kind in rows}


def sources(items: list[View]) -> list[str]:
    """This project's tables the views read."""
    return sorted(
        {line.split()[1] for v in items for line in v.select.splitlines() if line.startswith("FROM ")}
    )


def uid_index(table: str) -> str:
    return f"{table}_compat_uid"


def _index_uids(conn: psycopg.Connection, source_schema: str, items: list[View]) -> None:
    """An index on ``uid::text`` for each table the views read. The official schema's key
    is the text ``uid`` and its SQL joins on it (the policies' per-object subqueries):
    without it each such lookup scans the table, with it the 62 policies take about twice
    the official tables' time instead of quadratic time (docs/compat.md)."""
    for table in sources(items):
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ((uid::text))").format(
                sql.Identifier(uid_index(table)), sql.Identifier(source_schema, table)
            )
        )


def _missing_sources(conn: psycopg.Connection, source_schema: str, items: list[View]) -> list[str]:
    wanted = sources(items)
    present = {
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)",
            (source_schema, wanted),
        )
    }
    return [t for t in wanted if t not in present]


def _previous_version(conn: psycopg.Connection, schema: str) -> str | None:
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".{VERSION_TABLE}',)).fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, VERSION_TABLE))
    ).fetchone()
    return row[0] if row else None


def _record(conn: psycopg.Connection, schema: str, version: str, count: int) -> None:
    table = sql.Identifier(schema, VERSION_TABLE)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (version text NOT NULL, views integer NOT NULL,"
            " installed_at timestamptz NOT NULL)"
        ).format(table)
    )
    conn.execute(sql.SQL("DELETE FROM {}").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, now())").format(table), (version, count))


def uninstall(
    dsn: str, *, schema: str = "public", source_schema: str = "public", cascade: bool = False
) -> tuple[str, ...]:
    """Drop the compat views, their uid indexes and the version record (before a
    ``migrate_mode: forced`` sync, whose ``DROP TABLE`` the views would block). Views built
    on them are dropped too only with ``cascade``; they are returned, to be created again
    after the next install."""
    items = views()
    names = [v.name for v in items]
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        existing = {n: oid for n, (oid, kind) in _relations(conn, schema, names).items() if kind == "v"}
        conn.execute("SET LOCAL search_path = pg_catalog")
        dependents = tuple(
            f"{nsp}.{name}"
            for _, nsp, name, _, _ in conn.execute(_DEPENDENTS, {"roots": list(existing.values())})
        )
        if dependents and not cascade:
            raise CompatError(
                f"views are built on the compat views: {', '.join(dependents)} (--cascade drops them)"
            )
        for name in existing:
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(sql.Identifier(schema, name)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, VERSION_TABLE)))
        for table in sources(items):
            index = sql.Identifier(source_schema, uid_index(table))
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(index))
    return dependents
