"""The cache behind :mod:`watcher.state`: schema, writer and reader (see docs/architecture.md)."""
