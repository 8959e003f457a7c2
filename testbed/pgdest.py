"""STAND-IN PostgreSQL destination (plugin protocol v3), for the test bed only.

The real CloudQuery PostgreSQL destination cannot be built here: the Go module
proxy answers 403 "This module version is not available" for every
``github.com/cloudquery/...`` module (see README, "Blocked"). Until it can be, this
small destination lets the real ``cloudquery`` CLI deliver what the source sends
into a real PostgreSQL server, following the real destination's documented
behaviour:

* ``migrate_table``: CREATE TABLE with the primary key, ADD COLUMN for new columns;
* ``insert``: upsert on the primary key (``write_mode: overwrite[-delete-stale]``)
  or plain insert (``append``);
* ``delete`` (stale): ``DELETE WHERE _cq_source_name = ? AND _cq_sync_time < ?``;
* ``delete_record``: ``DELETE WHERE`` from equality predicates, AND/OR groups;
* ``Read``: every row of a table (what the state backend needs).

It is not the product and not a mock of it: tests that need the real destination's
own behaviour cannot pass through it, and the README says which those are.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import queue
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from cloudquery.plugin_v3 import arrow, plugin_pb2, plugin_pb2_grpc
from cloudquery.sdk.types import JSONType, UUIDType
from psycopg import sql

from watcher.server import serve_servicer, serve_until_signalled
from watcher.tables import UUID_HEX_POSITIONS

log = logging.getLogger("pgdest")


def _pg_type(t: pa.DataType) -> str:
    if isinstance(t, UUIDType):
        return "uuid"
    if isinstance(t, JSONType):
        return "jsonb"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _pg_type(t.value_type) + "[]"
    if pa.types.is_timestamp(t):
        return "timestamptz"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    return "text"


def _is_pk(f: pa.Field) -> bool:
    return bool(f.metadata and f.metadata.get(b"cq:extension:primary_key") == b"true")


def _column_values(col: pa.Array) -> list[Any]:
    if isinstance(col.type, UUIDType):
        return [None if v is None else uuid.UUID(bytes=v) for v in col.storage.to_pylist()]
    if isinstance(col.type, JSONType):
        return [None if v is None else v.decode() for v in col.storage.to_pylist()]
    return col.to_pylist()


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _uuid_text(col: pa.Array) -> pa.Array:
    """16-byte UUIDs to their canonical text, vectorised (a Python loop over 100k rows
    costs more than the whole COPY)."""
    if col.null_count:
        return pa.array(
            [None if v is None else str(uuid.UUID(bytes=v)) for v in col.storage.to_pylist()], pa.string()
        )
    n = len(col)
    raw = np.frombuffer(col.storage.buffers()[1], np.uint8)[col.offset * 16 : (col.offset + n) * 16].reshape(
        n, 16
    )
    hexed = np.empty((n, 32), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX_DIGITS[raw >> 4], _HEX_DIGITS[raw & 15]
    text = np.full((n, 36), ord("-"), np.uint8)
    text[:, UUID_HEX_POSITIONS] = hexed
    offsets = np.arange(n + 1, dtype=np.int32) * 36
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())])


def _pg_array_literal(items: list[str | None] | None) -> str | None:
    if items is None:
        return None
    quoted = ("NULL" if e is None else '"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"' for e in items)
    return "{" + ",".join(quoted) + "}"


def _csv_column(col: pa.Array) -> pa.Array:
    """One column in a form pyarrow's CSV writer emits as PostgreSQL input text."""
    if isinstance(col.type, UUIDType):
        return _uuid_text(col)
    if isinstance(col.type, JSONType):
        storage = col.storage
        return pa.Array.from_buffers(
            pa.string(), len(storage), storage.buffers(), storage.null_count, storage.offset
        )
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pa.array([_pg_array_literal(v) for v in col.to_pylist()], pa.string())
    return col


def batch_as_csv(batch: pa.RecordBatch) -> bytes:
    """The batch as CSV for ``COPY ... (FORMAT csv)``: strings always quoted (so an
    empty string stays empty), NULL as an unquoted empty field."""
    columns = [_csv_column(batch.column(i)) for i in range(batch.num_columns)]
    out = io.BytesIO()
    pacsv.write_csv(
        pa.Table.from_arrays(columns, names=batch.schema.names), out, pacsv.WriteOptions(include_header=False)
    )
    return out.getvalue()


class Destination:
    def __init__(self) -> None:
        self.dsn = ""
        self.write_mode = "overwrite-delete-stale"

    def init(self, spec: bytes) -> None:
        data = json.loads(spec or b"{}") or {}
        self.dsn = data.get("connection_string", "")
        if not self.dsn:
            raise ValueError("connection_string is required")
        with psycopg.connect(self.dsn) as conn:
            conn.execute("SELECT 1")

    def migrate(self, conn: psycopg.Connection, schema: pa.Schema) -> None:
        name = schema.metadata[b"cq:table_name"].decode()
        cols = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(_pg_type(f.type))) for f in schema]
        pks = [sql.Identifier(f.name) for f in schema if _is_pk(f)]
        if pks:
            cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(pks)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                sql.Identifier(name), sql.SQL(", ").join(cols)
            )
        )
        existing = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (name,)
            )
        }
        for f in (f for f in schema if f.name not in existing):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    sql.Identifier(name), sql.Identifier(f.name), sql.SQL(_pg_type(f.type))
                )
            )

    def prepare_insert(self, batch: pa.RecordBatch) -> tuple[str, sql.Composable, sql.Composable, bytes]:
        """The CPU half of an insert (no database): the table, the COPY and upsert
        statements, and the rows as CSV. ``run_insert`` COPYs the rows into a temporary
        twin of the table, then upserts from it in one statement (what the real
        destination does with pgx CopyFrom)."""
        name = batch.schema.metadata[b"cq:table_name"].decode()
        names = [f.name for f in batch.schema]
        pks = [f.name for f in batch.schema if _is_pk(f)]
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        table, staging = sql.Identifier(name), sql.Identifier(f"_cq_staging_{name}")
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(staging, cols)
        upsert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(table, cols, cols, staging)
        if pks and self.write_mode != "append":
            upsert += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                sql.SQL(", ").join(map(sql.Identifier, pks)),
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in pks
                ),
            )
        return name, copy, upsert, batch_as_csv(batch)

    @staticmethod
    def run_insert(
        conn: psycopg.Connection, name: str, copy_stmt: sql.Composable, upsert: sql.Composable, data: bytes
    ) -> None:
        table, staging = sql.Identifier(name), sql.Identifier(f"_cq_staging_{name}")
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {})").format(staging, table))
            cur.execute(sql.SQL("TRUNCATE {}").format(staging))
            with cur.copy(copy_stmt) as copy:
                copy.write(data)
            cur.execute(upsert)

    def delete_stale(self, conn: psycopg.Connection, msg: Any) -> None:
        table = msg.table_name or arrow.new_schema_from_bytes(msg.table).metadata[b"cq:table_name"].decode()
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE _cq_source_name = %s AND _cq_sync_time < %s").format(
                sql.Identifier(table)
            ),
            (msg.source_name, msg.sync_time.ToDatetime()),
        )

    def delete_record(self, conn: psycopg.Connection, msg: Any) -> None:
        groups, params = [], []
        for group in msg.where_clause:
            preds = []
            for p in group.predicates:
                value = _column_values(arrow.new_record_from_bytes(p.record).column(0))[0]
                preds.append(sql.SQL("{} = %s").format(sql.Identifier(p.column)))
                params.append(value)
            joiner = " OR " if group.grouping_type == plugin_pb2.PredicatesGroup.GroupingType.OR else " AND "
            groups.append(sql.SQL("(") + sql.SQL(joiner).join(preds) + sql.SQL(")"))
        where = sql.SQL(" AND ").join(groups) if groups else sql.SQL("TRUE")
        conn.execute(sql.SQL("DELETE FROM {} WHERE ").format(sql.Identifier(msg.table_name)) + where, params)

    def read(self, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        name = schema.metadata[b"cq:table_name"].decode()
        with psycopg.connect(self.dsn) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if not exists or exists[0] is None:
                return
            cols = sql.SQL(", ").join(sql.Identifier(f.name) for f in schema)
            rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier(name))).fetchall()
        if rows:
            arrays = [pa.array([r[i] for r in rows], f.type) for i, f in enumerate(schema)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


class InsertWorkers:
    """Inserts on a few connections at once, a table always on the same one (its
    batches stay in order). Like the real destination's per-table batch writers, this
    lets PostgreSQL use more than one core while the next batch is converted."""

    def __init__(self, dsn: str, *, connections: int = 2) -> None:
        self._conns = [psycopg.connect(dsn) for _ in range(connections)]
        self._queues: list[queue.Queue[tuple[Any, ...] | None]] = [
            queue.Queue(maxsize=2) for _ in self._conns
        ]
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._work, args=(c, q), name=f"pgdest-insert-{i}", daemon=True)
            for i, (c, q) in enumerate(zip(self._conns, self._queues, strict=True))
        ]
        for t in self._threads:
            t.start()

    def _work(self, conn: psycopg.Connection, jobs: queue.Queue[tuple[Any, ...] | None]) -> None:
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                if not self._errors:
                    Destination.run_insert(conn, *job)
            except BaseException as exc:  # noqa: BLE001 - re-raised by barrier()
                self._errors.append(exc)
            finally:
                jobs.task_done()

    def submit(self, job: tuple[str, sql.Composable, sql.Composable, bytes]) -> None:
        self._raise()
        self._queues[zlib.crc32(job[0].encode()) % len(self._queues)].put(job)

    def barrier(self) -> None:
        """Wait for every queued insert and commit them (before a delete, a flush, the end)."""
        for q in self._queues:
            q.join()
        self._raise()
        for c in self._conns:
            c.commit()

    def _raise(self) -> None:
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        for c in self._conns:
            c.close()


class Servicer(plugin_pb2_grpc.PluginServicer):
    def __init__(self) -> None:
        self.dest = Destination()

    def GetName(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetName.Response(name="postgresql-standin")

    def GetVersion(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetVersion.Response(version="v0.0.1-standin")

    def GetSpecSchema(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetSpecSchema.Response(json_schema="")

    def Init(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.dest.init(request.spec)
        except Exception as exc:  # noqa: BLE001 - reported to the CLI
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"postgresql-standin: {exc}")
        return plugin_pb2.Init.Response()

    def TestConnection(self, request: Any, context: Any) -> Any:
        return plugin_pb2.TestConnection.Response(success=True)

    def Write(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        d = self.dest
        inserts = InsertWorkers(d.dsn)
        try:
            with psycopg.connect(d.dsn) as conn:
                for msg in request_iterator:
                    kind = msg.WhichOneof("message")
                    if kind == "insert":
                        inserts.submit(d.prepare_insert(arrow.new_record_from_bytes(msg.insert.record)))
                        continue
                    # Everything else acts on what was inserted before it.
                    inserts.barrier()
                    if kind == "migrate_table":
                        d.migrate(conn, arrow.new_schema_from_bytes(msg.migrate_table.table))
                    elif kind == "delete":
                        d.delete_stale(conn, msg.delete)
                    elif kind == "delete_record":
                        d.delete_record(conn, msg.delete_record)
                    conn.commit()
                inserts.barrier()
                conn.commit()
        finally:
            inserts.close()
        return plugin_pb2.Write.Response()

    def Read(self, request: Any, context: Any) -> Iterator[Any]:
        for batch in self.dest.read(arrow.new_schema_from_bytes(request.table)):
            yield plugin_pb2.Read.Response(record=arrow.record_to_bytes(batch))

    def Close(self, request: Any, context: Any) -> Any:
        return plugin_pb2.Close.Response()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgdest")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--address", default="127.0.0.1:7778")
    serve.add_argument("--network", default="tcp")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", default="text")
    serve.add_argument("--no-sentry", action="store_true")
    serve.add_argument("--license", default="")
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    serve_until_signalled(serve_servicer(Servicer(), args.address, network=args.network, max_workers=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
