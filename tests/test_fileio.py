"""The one atomic write: readers see the old file or the whole new one; failures leave no temporary file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from isonyc_dagster.fileio import atomic_output, atomic_write


def test_atomic_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "tile.png"
    atomic_write(target, b"one")
    atomic_write(target, b"two", fsync=False)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by servers running as other users
    assert sorted(p.name for p in target.parent.iterdir()) == ["tile.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_output_takes_any_writer(tmp_path: Path) -> None:
    target = tmp_path / "table.bin"
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"\x00" * 10)
        assert not target.exists()  # nothing is visible before the block succeeds
    assert target.stat().st_size == 10
