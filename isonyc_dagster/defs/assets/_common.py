"""Helpers shared by the asset modules."""

import base64
import hashlib
import io
from collections.abc import Mapping

import dagster as dg
from PIL import Image

from isonyc_dagster.defs.partitions import parse_key2

#: zlib level of tiles written to the store: ~2× faster than the default 6 for a few percent more bytes.
TILE_PNG_LEVEL = 3

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
