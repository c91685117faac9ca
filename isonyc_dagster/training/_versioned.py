"""Versioned output directories (``<root>/v1``, ``v2``, …) shared by pair sets and datasets.

A version is written into a temporary directory beside the others and renamed into place once complete, with its
manifest (which carries a fingerprint of the content) written last: a directory named ``v<N>`` that holds a
manifest is complete. Writing content whose fingerprint equals the newest version's reuses that version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isonyc_dagster.fileio import atomic_write, fsync_dir


@dataclass(frozen=True)
class Written:
    path: Path
    version: int
    fingerprint: str
    reused: bool  # the newest version already held exactly this content


def versions(root: str | Path, manifest: str) -> list[tuple[int, Path]]:
    """The complete versions ``v<N>`` under ``root`` (those with ``manifest``), oldest first."""
    root = Path(root)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit() and (p / manifest).exists():
                out.append((int(p.name[1:]), p))
    return sorted(out)


def read_manifest(path: Path, manifest: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / manifest).read_text())
    return data


def write_version(
    root: str | Path, manifest: str, fingerprint: str, write: Callable[[Path], dict[str, Any]]
) -> Written:
    """Write the next version under ``root``: ``write(tmp_dir)`` writes the files and returns the manifest's body."""
    root = Path(root)
    found = versions(root, manifest)
    if found:
        n, path = found[-1]
        if read_manifest(path, manifest).get("fingerprint") == fingerprint:
            return Written(path, n, fingerprint, reused=True)
    version = found[-1][0] + 1 if found else 1
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".v{version}.", suffix=".tmp"))
    try:
        body = write(tmp)
        body = {**body, "version": version, "fingerprint": fingerprint}
        atomic_write(tmp / manifest, json.dumps(body, indent=2, sort_keys=True).encode())
        tmp.chmod(0o755)
        final = root / f"v{version}"
        tmp.rename(final)  # a concurrent writer of the same version fails here instead of mixing files
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Written(final, version, fingerprint, reused=False)
