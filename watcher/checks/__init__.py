"""Hardening checks: SQL over the tables the CloudQuery PostgreSQL destination writes.

Each check is one file in ``sql/``, runnable on its own in psql, that returns one row
per offending object (``context_name, kind, namespace, name, uid``). Its metadata is
the comment block at the top of the file::

    -- id: privileged-containers
    -- title: Privileged containers
    -- severity: high
    -- frameworks: nsa-cisa, pss-baseline, pss-restricted
    -- section: NSA/CISA v1.2 "..."; PSS Baseline "..."
    -- remediation: ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
SEVERITIES = ("low", "medium", "high", "critical")
FRAMEWORKS = ("nsa-cisa", "pss-baseline", "pss-restricted")
#: The columns every check returns, in this order.
RESULT_COLUMNS = ("context_name", "kind", "namespace", "name", "uid")

_HEADER = re.compile(r"^-- (id|title|severity|frameworks|section|remediation): (.+)$")
_TABLE = re.compile(r"\bk8s_[a-z_]+\b")


class CheckFileError(ValueError):
    """A check file whose header is incomplete or invalid."""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: str
    frameworks: tuple[str, ...]
    section: str
    remediation: str
    #: The query as written (comments included), without the final semicolon.
    sql: str

    @property
    def tables(self) -> frozenset[str]:
        """The tables the query reads: a check is skipped when one is missing."""
        return frozenset(_TABLE.findall(self.sql))

    @property
    def rank(self) -> int:
        return SEVERITIES.index(self.severity)


def parse_check(text: str, source: str) -> Check:
    meta: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _HEADER.match(line)
        if match:
            meta[match[1]] = match[2].strip()
    missing = {"id", "title", "severity", "frameworks", "section", "remediation"} - meta.keys()
    if missing:
        raise CheckFileError(f"{source}: header lacks {', '.join(sorted(missing))}")
    if meta["id"] != Path(source).stem:
        raise CheckFileError(f"{source}: id {meta['id']!r} is not the file's name")
    frameworks = tuple(f.strip() for f in meta["frameworks"].split(","))
    if meta["severity"] not in SEVERITIES or not set(frameworks) <= set(FRAMEWORKS):
        raise CheckFileError(f"{source}: unknown severity or framework in {meta}")
    return Check(
        id=meta["id"],
        title=meta["title"],
        severity=meta["severity"],
        frameworks=frameworks,
        section=meta["section"],
        remediation=meta["remediation"],
        sql=text.strip().removesuffix(";"),
    )


def load_checks(framework: str | None = None, directory: Path = SQL_DIR) -> list[Check]:
    """Every check in ``directory`` (of one framework, if given), ordered by id."""
    checks = [parse_check(p.read_text(), p.name) for p in sorted(directory.glob("*.sql"))]
    return [c for c in checks if framework is None or framework in c.frameworks]
