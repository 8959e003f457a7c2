"""The failures the plugin reports to the CLI by name (a light module: the gRPC
servicer catches these without importing what raises them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The user's configuration is wrong (spec, kubeconfig, contexts): fix and rerun."""


class CacheError(RuntimeError):
    """The cache file cannot be used (locked by another writer, unreadable, not a cache)."""
