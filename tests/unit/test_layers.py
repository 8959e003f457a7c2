"""The import contracts (pyproject.toml, [tool.importlinter]) hold on the tree, and break
when a lower layer imports a higher one: run on a copy of ``watcher/`` with one bad import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_its_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "expected"),
    [
        # The cache reaching up into the snapshot reader (a higher layer).
        ("state", "from watcher.snapshot import SnapshotReader", "watcher.state -> watcher.snapshot"),
        # The catalog reaching up into the spec (the inversion the catalog removed).
        ("catalog", "from watcher.spec import Spec", "watcher.catalog -> watcher.spec"),
        # A query against the cache's tables outside watcher/cache/.
        ("plugin", "import sqlalchemy", "watcher.plugin is not allowed to import sqlalchemy"),
        # The cache's schema reaching up into its writer.
        (
            "cache/schema",
            "from watcher.cache.writer import CacheStore",
            "watcher.cache.schema -> watcher.cache.writer",
        ),
    ],
)
def test_a_bad_import_breaks_a_contract(tmp_path: Path, module: str, bad_import: str, expected: str) -> None:
    shutil.copytree(ROOT / "watcher", tmp_path / "watcher", ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "watcher" / f"{module}.py"
    source.write_text(source.read_text() + f"\n{bad_import}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert expected in result.stdout, result.stdout
