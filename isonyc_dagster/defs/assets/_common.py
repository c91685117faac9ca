"""Helpers shared by the asset modules: partition keys, previews, data versions and per-partition metadata."""

import base64
import hashlib
import io
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from PIL import Image

from isonyc_dagster.defs.partitions import parse_key2

#: Runs with at most this many partitions get an inline thumbnail per partition; larger runs link the full tile
#: only, which keeps the event log small at city scale.
THUMBNAILS_UP_TO = 64


def partition_pairs(context: dg.AssetExecutionContext) -> list[tuple[int, int]]:
    """The (x, y) / (bx, by) pairs of every partition of this run (single partition or a range)."""
    # context.partition_key raises in range runs: always go through partition_keys.
    return [parse_key2(k) for k in context.partition_keys]


def thumbnail_md(png: bytes, *, max_px: int = 160, title: str = "preview") -> dg.MetadataValue:
    """A small inline preview for the UI (nearest-neighbour, so pixel art stays crisp)."""
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        scale = max_px / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{b64})")


def combined_version(shas: Mapping[str, str]) -> dg.DataVersion:
    """Data version of a run: the image hash for one partition, a hash of all (key, hash) pairs for a range.

    Dagster records one data version per materialization step, so in a range run every partition gets the combined
    hash; regenerating one partition later gives that partition alone a new version, and only its dependants go stale.
    """
    if len(shas) == 1:
        return dg.DataVersion(next(iter(shas.values())))
    h = hashlib.sha256()
    for k in sorted(shas):
        h.update(f"{k}={shas[k]};".encode())
    return dg.DataVersion(h.hexdigest())


#: Shown on every partition of a multi-partition run: Dagster keeps one metadata set per run step, so each
#: partition's own previews and provenance are logged as an observation of that partition.
PER_PARTITION_NOTE = (
    "this run covered several partitions: this partition's previews and provenance are its AssetObservation "
    "(Events tab, or 'View all historical events' on the partition)"
)


def observe(context: dg.AssetExecutionContext, partition: str, metadata: dict) -> None:
    """Per-partition metadata in a multi-partition run (a MaterializeResult has one set for the whole run)."""
    context.log_event(
        dg.AssetObservation(asset_key=context.asset_key, partition=partition, metadata=metadata)
    )


class PartitionRun:
    """The partitions of one run (one key or a key range), and what the asset reports about each.

    Dagster keeps one metadata set per run step: a single-partition run gets the partition's metadata on its
    materialization; a range run logs each partition's metadata as an observation of that partition and says so.
    """

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self.context = context
        self.keys: list[str] = list(context.partition_keys)
        self.pairs = partition_pairs(context)
        self.shas: dict[str, str] = {}
        self._last: dict[str, Any] = {}

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int]]]:
        return iter(zip(self.keys, self.pairs, strict=True))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def thumbnails(self) -> bool:
        """Whether per-partition inline previews are worth their event-log size."""
        return len(self.keys) <= THUMBNAILS_UP_TO

    def skip(self, key: str, metadata: dict[str, Any]) -> None:
        """A partition with nothing to do (outside the bounds, an empty lattice cell)."""
        observe(self.context, key, metadata)

    def record(self, key: str, sha256: str, metadata: dict[str, Any]) -> None:
        """A partition done: its output hash (for the data version) and its metadata."""
        self.shas[key] = sha256
        self._last = metadata
        if len(self.keys) > 1:
            observe(self.context, key, metadata)

    def result(self, metadata: dict[str, Any], **kwargs: Any) -> dg.MaterializeResult:
        """The run's materialization: totals, plus the partition's own metadata when there is one partition."""
        meta = dict(metadata)
        if len(self.keys) == 1:
            meta.update(self._last)
        else:
            meta["per_partition"] = PER_PARTITION_NOTE
        version = combined_version(self.shas) if self.shas else None
        return dg.MaterializeResult(metadata=meta, data_version=version, **kwargs)
