"""The code base stays clean: ruff (lint, format, complexity), the import layering, and mypy on the core.

The rules live in pyproject.toml: ``[tool.ruff]`` (C901 max 15), ``[tool.importlinter]`` (the layers of
docs/ARCHITECTURE.md; the core never imports Dagster) and ``[tool.mypy]`` (the core packages).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool, path=str(BIN)) or shutil.which(tool)
    assert exe, f"{tool} is installed with the test extras"
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff_check_is_clean() -> None:
    out = _run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    out = _run("ruff", "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_layers_hold() -> None:
    out = _run("lint-imports", "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.slow
def test_mypy_on_the_core_is_clean() -> None:
    out = _run("mypy", "--no-incremental", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
