"""A null source for the benchmark: emits pre-built Arrow batches from memory.

``bench/run.py`` writes every table of a warm cache to an Arrow IPC file first; this
plugin loads that file at Init and sends the very same rows on Sync. Its sync time is
the pipeline's limit (CLI + destination), against which the real plugin is compared.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from cloudquery.plugin_v3 import arrow, plugin_pb2, plugin_pb2_grpc
from cloudquery.sdk.types import JSONType  # noqa: F401 - registers the extension types

from watcher.server import serve_servicer, serve_until_signalled


def read_batches(path: str | Path) -> list[pa.RecordBatch]:
    """The record batches bench/run.py saved: each row of the file holds one serialised
    batch and its serialised schema (batches of many tables in one file)."""
    batches = []
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            row = reader.get_batch(i)
            schema = pa.ipc.read_schema(pa.py_buffer(row.column(1)[0].as_py()))
            batches.append(pa.ipc.read_record_batch(pa.py_buffer(row.column(0)[0].as_py()), schema))
    return batches


def write_batches(path: str | Path, batches: Iterable[pa.RecordBatch]) -> None:
    """Batches of many schemas in one IPC file, for :func:`read_batches`: each row holds
    one serialised batch and its serialised schema."""
    with pa.OSFile(str(path), "wb") as sink:
        writer = None
        for b in batches:
            payload = pa.RecordBatch.from_arrays(
                [pa.array([b.serialize().to_pybytes()]), pa.array([b.schema.serialize().to_pybytes()])],
                names=["batch", "schema"],
            )
            if writer is None:
                writer = pa.ipc.new_file(sink, payload.schema)
            writer.write_batch(payload)
        if writer is not None:
            writer.close()


class NullSource(plugin_pb2_grpc.PluginServicer):
    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.schemas: dict[str, pa.Schema] = {}

    def GetName(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetName.Response(name="null-source")

    def GetVersion(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetVersion.Response(version="v0.0.1")

    def Init(self, request: Any, context: Any) -> Any:
        spec = json.loads(request.spec or b"{}") or {}
        if not request.no_connection:
            self.batches = read_batches(spec["batches"])
            for batch in self.batches:
                self.schemas.setdefault(batch.schema.metadata[b"cq:table_name"].decode(), batch.schema)
        return plugin_pb2.Init.Response()

    def GetTables(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetTables.Response(tables=[arrow.schema_to_bytes(s) for s in self.schemas.values()])

    def Sync(self, request: Any, context: Any) -> Iterator[Any]:
        for schema in self.schemas.values():
            yield plugin_pb2.Sync.Response(
                migrate_table=plugin_pb2.Sync.MessageMigrateTable(table=arrow.schema_to_bytes(schema))
            )
        for batch in self.batches:
            yield plugin_pb2.Sync.Response(
                insert=plugin_pb2.Sync.MessageInsert(record=arrow.record_to_bytes(batch))
            )

    def Close(self, request: Any, context: Any) -> Any:
        return plugin_pb2.Close.Response()


def main(argv: list[str]) -> int:
    address = argv[argv.index("--address") + 1]
    network = argv[argv.index("--network") + 1] if "--network" in argv else "tcp"
    serve_until_signalled(serve_servicer(NullSource(), address, network=network, max_workers=4))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
