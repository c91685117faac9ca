"""The omni dataset on disk: a versioned directory readable as Parquet and as a Hugging Face image folder.

Layout of one version (``<training dir>/omni/v<N>/``)::

    index.parquet                 one row per example: input_image, target_image (paths relative to the
                                  version directory), prompt, kind, x, y, split, input_sha256, target_sha256, seed
    train/metadata.jsonl          Hugging Face ``imagefolder``: file_name (the input), target_file_name, prompt,
    validation/metadata.jsonl     kind, x, y, input_sha256, target_sha256, seed
    train/images/<sha256>.png     inputs and targets, content-addressed (a pair's target is stored once)
    validation/images/...
    dataset.json                  written last: seed, counts per kind and split, the fingerprint

Both indexes point at the same image files. A version is built in a temporary directory and renamed into place,
so a directory named ``v<N>`` is always complete; a build whose fingerprint (every row and hash) equals the
newest version's is not written again. :func:`load_split` is what the LoRA trainer and the evaluation read.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.training import _versioned

#: The two splits, in the names Hugging Face ``datasets`` uses.
SPLITS: tuple[str, ...] = ("train", "validation")
INDEX_NAME = "index.parquet"
META_NAME = "metadata.jsonl"
MANIFEST_NAME = "dataset.json"
FORMAT = "isonyc-omni-1"
#: The Parquet index's columns, in order.
COLUMNS: tuple[str, ...] = (
    "input_image",
    "target_image",
    "prompt",
    "kind",
    "x",
    "y",
    "split",
    "input_sha256",
    "target_sha256",
    "seed",
)


class DatasetError(IsonycError, ValueError):
    """A dataset directory is missing, incomplete or asked for an unknown split."""


@dataclass(frozen=True)
class Example:
    """One training example: the template sent to the model, the image it should answer, the instruction."""

    input: Image.Image  # RGB template: render inside a 2 px red border, generated pixels outside
    target: Image.Image  # RGB generation of the same size
    prompt: str
    kind: str  # one of training.omni.KINDS
    x: int = 0  # the pair's top-left quadrant
    y: int = 0


@dataclass(frozen=True)
class Row:
    """An example as written: PNG bytes and where they go."""

    input_png: bytes
    target_png: bytes
    prompt: str
    kind: str
    x: int
    y: int
    split: str
    seed: int

    @property
    def input_sha256(self) -> str:
        return hashlib.sha256(self.input_png).hexdigest()

    @property
    def target_sha256(self) -> str:
        return hashlib.sha256(self.target_png).hexdigest()


@dataclass(frozen=True)
class WrittenDataset:
    """Where a build went and what it holds."""

    path: Path
    version: int
    fingerprint: str
    rows: int
    reused: bool  # True: the newest version already held exactly this dataset


class UploadTarget(Protocol):
    """Where a dataset can be uploaded: ``publish.deploy.open_target(uri)`` gives one (directory, GCS, S3)."""

    def put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None: ...


def versions(root: str | Path) -> list[tuple[int, Path]]:
    """The complete dataset versions ``v<N>`` under ``root``, oldest first."""
    return _versioned.versions(root, MANIFEST_NAME)


def latest(root: str | Path) -> Path:
    """The newest complete version under ``root``; ``DatasetError`` when there is none."""
    found = versions(root)
    if not found:
        raise DatasetError(f"no dataset version under {root}: build one first (`isonyc dataset build`)")
    return found[-1][1]


def fingerprint(rows: Sequence[Row]) -> str:
    """A hash of every row's fields and image hashes: equal builds have equal fingerprints."""
    h = hashlib.sha256()
    for r in rows:
        fields = [r.input_sha256, r.target_sha256, r.prompt, r.kind, r.x, r.y, r.split, r.seed]
        h.update(json.dumps(fields).encode())
    return h.hexdigest()


def _image_rel(split: str, sha: str) -> str:
    return f"{split}/images/{sha}.png"


def write_dataset(
    root: str | Path,
    rows: Sequence[Row],
    *,
    extra: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
) -> WrittenDataset:
    """Write ``rows`` as the next version under ``root`` (or reuse the newest one if identical).

    ``extra`` goes into ``dataset.json``; ``files`` (name → bytes, e.g. a preview grid) beside the index.
    """
    if not rows:
        raise DatasetError("no examples to write")
    bad = sorted({r.split for r in rows} - set(SPLITS))
    if bad:
        raise DatasetError(f"unknown split(s) {bad}; use {list(SPLITS)}")

    def write(tmp: Path) -> dict[str, Any]:
        _write_files(tmp, rows)
        for name, data in (files or {}).items():
            atomic_write(tmp / name, data, fsync=False)
        return {"format": FORMAT, "rows": len(rows), "counts": counts(rows), **(extra or {})}

    w = _versioned.write_version(root, MANIFEST_NAME, fingerprint(rows), write)
    return WrittenDataset(w.path, w.version, w.fingerprint, len(rows), w.reused)


def counts(rows: Iterable[Row]) -> dict[str, dict[str, int]]:
    """Examples per split and kind."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        per = out.setdefault(r.split, {})
        per[r.kind] = per.get(r.kind, 0) + 1
    return {s: dict(sorted(k.items())) for s, k in sorted(out.items())}


def _write_files(tmp: Path, rows: Sequence[Row]) -> None:
    written: set[str] = set()
    table: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    meta: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in rows:
        i_sha, t_sha = r.input_sha256, r.target_sha256
        for sha, png in ((i_sha, r.input_png), (t_sha, r.target_png)):
            rel = _image_rel(r.split, sha)
            if rel not in written:
                # bulk output inside a temp dir that is renamed whole: no per-file fsync needed
                atomic_write(tmp / rel, png, fsync=False)
                written.add(rel)
        values = {
            "input_image": _image_rel(r.split, i_sha),
            "target_image": _image_rel(r.split, t_sha),
            "prompt": r.prompt,
            "kind": r.kind,
            "x": r.x,
            "y": r.y,
            "split": r.split,
            "input_sha256": i_sha,
            "target_sha256": t_sha,
            "seed": r.seed,
        }
        for c in COLUMNS:
            table[c].append(values[c])
        hf = {
            "file_name": f"images/{i_sha}.png",
            "target_file_name": f"images/{t_sha}.png",
            **{k: values[k] for k in ("prompt", "kind", "x", "y", "input_sha256", "target_sha256", "seed")},
        }
        meta[r.split].append(json.dumps(hf, sort_keys=True))
    schema = pa.schema([(c, pa.int64() if c in ("x", "y", "seed") else pa.string()) for c in COLUMNS])
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        p = Path(d) / INDEX_NAME
        pq.write_table(pa.table(table, schema=schema), p)
        atomic_write(tmp / INDEX_NAME, p.read_bytes(), fsync=False)
    for split, lines in meta.items():
        if lines:
            atomic_write(tmp / split / META_NAME, ("\n".join(lines) + "\n").encode(), fsync=False)


def read_index(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """The Parquet index's rows as dicts (paths relative to ``dataset_dir``)."""
    path = Path(dataset_dir) / INDEX_NAME
    if not path.exists():
        raise DatasetError(
            f"{dataset_dir} is not a dataset version (no {INDEX_NAME}); give a directory like <training>/omni/v1"
        )
    return pq.read_table(path).to_pylist()


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # convert() loads the pixels, so the file is closed on return


def load_split(dataset_dir: str | Path, split: str) -> list[Example]:
    """Every example of ``split`` ("train" or "validation") of a dataset version, in index order.

    ``dataset_dir`` is a version directory (``.../omni/v3``) or the directory holding versions (the newest is read).
    Holds every image in memory (about 6 MB per 1024² example); :func:`iter_split` streams them instead.
    """
    return list(iter_split(dataset_dir, split))


def iter_split(dataset_dir: str | Path, split: str) -> Iterator[Example]:
    """:func:`load_split` one example at a time."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    d = Path(dataset_dir)
    if not (d / INDEX_NAME).exists() and versions(d):
        d = latest(d)
    for row in read_index(d):
        if row["split"] != split:
            continue
        yield Example(
            input=_open_rgb(d / row["input_image"]),
            target=_open_rgb(d / row["target_image"]),
            prompt=row["prompt"],
            kind=row["kind"],
            x=int(row["x"]),
            y=int(row["y"]),
        )


def upload_dataset(dataset_dir: str | Path, target: UploadTarget, *, prefix: str = "") -> int:
    """Copy a dataset version to ``target`` (images first, the indexes and ``dataset.json`` last); files sent."""
    d = Path(dataset_dir)
    if not (d / MANIFEST_NAME).exists():
        raise DatasetError(f"{d} is not a complete dataset version (no {MANIFEST_NAME})")
    files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    last = {INDEX_NAME, META_NAME, MANIFEST_NAME}
    ordered = [p for p in files if p.name not in last] + [
        p for p in files if p.name in last and p.name != MANIFEST_NAME
    ]
    ordered.append(d / MANIFEST_NAME)
    base = prefix.strip("/")
    for p in ordered:
        rel = p.relative_to(d).as_posix()
        key = f"{base}/{rel}" if base else rel
        ctype = {
            ".png": "image/png",
            ".parquet": "application/vnd.apache.parquet",
            ".json": "application/json",
        }.get(p.suffix, "application/x-ndjson" if p.suffix == ".jsonl" else "application/octet-stream")
        target.put(key, p.read_bytes(), ctype, "no-cache")
    return len(ordered)
