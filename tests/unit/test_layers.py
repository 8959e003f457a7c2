"""The import contracts (pyproject.toml, [tool.importlinter]) hold on the tree, and break
when a lower layer imports a higher one: run on a copy of ``watcher/`` with one bad import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "watcher", tmp_path / "watcher", ignore=shutil.ignore_patterns("__pycache__"))
    state = tmp_path / "watcher" / "state.py"
    # The cache reaching up into the snapshot reader (a higher layer).
    state.write_text(state.read_text() + "\nfrom watcher.snapshot import SnapshotReader  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "watcher.state -> watcher.snapshot" in result.stdout, result.stdout
