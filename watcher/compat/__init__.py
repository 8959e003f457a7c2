"""The official CloudQuery Kubernetes source's schema (v6.2.4), as PostgreSQL views over
this project's tables, so its users' SQL, policies and dashboards run unchanged.

Views, not a second set of emitted tables: no second copy of the rows and no second
sync, always as fresh as the last sync; the price is PostgreSQL only (docs/compat.md).
Each view is one file in ``sql/`` (``<official table>.sql``, a SELECT), written by
``python -m watcher.compat.generate`` and installed by ``k8s-watcher compat install``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
#: The official plugin version whose schema the views reproduce.
OFFICIAL_VERSION = "v6.2.4"


@dataclass(frozen=True)
class View:
    name: str
    select: str


def views(sql_dir: Path = SQL_DIR) -> list[View]:
    """Every compat view, by name."""
    return [View(p.stem, p.read_text()) for p in sorted(sql_dir.glob("*.sql"))]


def compat_version(items: list[View]) -> str:
    """The version recorded at install: the official version and a hash of the views' SQL
    (so a changed view, not only a new release, is an upgrade)."""
    digest = hashlib.sha256("".join(f"{v.name}\n{v.select}" for v in items).encode()).hexdigest()[:12]
    return f"{OFFICIAL_VERSION}+{digest}"
