"""The layer check: a lower layer importing a higher one fails the suite.

The contracts (pyproject.toml, `[tool.importlinter]`) follow docs/ARCHITECTURE.md:
cli → mount → fuse → fs → fetch → cache | tiles → source → slide → catalog → dicom →
errors | metrics, views above the tree above its nodes, and no FUSE import below fuse.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_dependencies_point_down_only() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout
