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

The pod-spec and container expansions that most checks share are defined once, in
``sql/include/expansions.sql``: a check file includes it (``\\ir include/expansions.sql``)
and writes ``:pod_specs`` or ``:containers`` on a line of its own where the expansion
goes. psql sets and interpolates those variables itself, so each file still runs alone
(``psql -f``); ``parse_check`` splices the same text in, so ``Check.sql`` is the whole
query the runner sends and the tables it names are the tables the check reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
#: The shared expansions, relative to a directory of checks.
INCLUDE = Path("include/expansions.sql")
SEVERITIES = ("low", "medium", "high", "critical")
FRAMEWORKS = ("nsa-cisa", "pss-baseline", "pss-restricted")
#: The columns every check returns, in this order.
RESULT_COLUMNS = ("context_name", "kind", "namespace", "name", "uid")
#: Where ``check`` stores each run's results (``runner``), which the findings follow (``tracking``).
RESULTS_TABLE = "k8s_policy_results"

_HEADER = re.compile(r"^-- (id|title|severity|frameworks|section|remediation): (.+)$")
_TABLE = re.compile(r"\bk8s_[a-z_]+\b")
_INCLUDE_LINE = re.compile(rf"^\\ir {re.escape(str(INCLUDE))}\n", re.M)
#: One expansion in the include file: ``$name$\n<text>\n$name$ AS name``.
_EXPANSION = re.compile(r"\$(\w+)\$\n(.*?)\n\$\1\$ AS \1\b", re.S)
#: Where a check file uses one: a line holding only ``:name``.
_USE = re.compile(r"^:(\w+)$", re.M)


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


def expansions(directory: Path = SQL_DIR) -> dict[str, str]:
    """The shared expansions by name, as ``include/expansions.sql`` defines them for psql."""
    return dict(_EXPANSION.findall((directory / INCLUDE).read_text()))


def expand(text: str, source: str, directory: Path = SQL_DIR) -> str:
    """``text`` with the include line dropped and each ``:name`` line replaced by its expansion."""
    if not _USE.search(text):
        return text
    if not _INCLUDE_LINE.search(text):
        raise CheckFileError(f"{source}: uses an expansion but does not include {INCLUDE}")
    shared = expansions(directory)

    def one(use: re.Match[str]) -> str:
        if use[1] not in shared:
            raise CheckFileError(f"{source}: {INCLUDE} defines no expansion {use[1]!r}")
        return shared[use[1]]

    return _USE.sub(one, _INCLUDE_LINE.sub("", text))


def parse_check(text: str, source: str, directory: Path = SQL_DIR) -> Check:
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
        sql=expand(text, source, directory).strip().removesuffix(";"),
    )


def load_checks(framework: str | None = None, directory: Path = SQL_DIR) -> list[Check]:
    """Every check in ``directory`` (of one framework, if given), ordered by id."""
    checks = [parse_check(p.read_text(), p.name, directory) for p in sorted(directory.glob("*.sql"))]
    return [c for c in checks if framework is None or framework in c.frameworks]
