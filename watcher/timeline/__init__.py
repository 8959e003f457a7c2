"""The fleet as of a time: SQL functions over the history tables a sync writes into
PostgreSQL (``k8s_objects_as_of``, ``k8s_objects_diff``, ``k8s_changes_between``) and
their indexes, installed by ``k8s-watcher history install`` (docs/history.md)."""

from __future__ import annotations

from pathlib import Path

SQL_FILE = Path(__file__).parent / "sql" / "timeline.sql"
FUNCTIONS = ("k8s_objects_as_of", "k8s_objects_diff", "k8s_changes_between")
TABLES = ("k8s_object_changes", "k8s_object_lifetimes")


class TimelineError(Exception):
    """The functions cannot be installed (say why, for the command line)."""


def timeline_sql(schema: str = "public") -> str:
    """The install script for ``schema`` (the functions' and the history tables')."""
    quoted = '"' + schema.replace('"', '""') + '"'
    return SQL_FILE.read_text().replace(":schema", quoted)


def install(dsn: str, *, schema: str = "public") -> None:
    """Create or replace the functions and indexes, in one transaction."""
    import psycopg

    try:
        with psycopg.connect(dsn) as conn:
            found = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
                )
            }
            missing = [t for t in TABLES if t not in found]
            if missing:
                raise TimelineError(
                    f"no {', '.join(missing)} in schema {schema}: sync the history tables into this "
                    "database first (they are among the default tables)"
                )
            conn.execute(timeline_sql(schema).encode())
    except psycopg.Error as exc:
        raise TimelineError(str(exc).strip()) from exc
