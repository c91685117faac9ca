"""Helpers shared by the asset modules: partition keys, previews, data versions and per-partition metadata."""

import base64
import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from PIL import Image

from isonyc_dagster.defs.partitions import parse_key2
from isonyc_dagster.defs.runs import raise_if_stopping

#: Runs with at most this many partitions, of a map of at most ``THUMBNAIL_MAP_UP_TO`` quadrants (the demo's size),
#: get an inline thumbnail per partition; the others link the full tile only, which keeps the instance small at city
#: scale (a step's two thumbnails are ~3.6 kB of its ~9 kB materialization event: 1.7 kB per quadrant).
THUMBNAILS_UP_TO = 64
THUMBNAIL_MAP_UP_TO = 256


def key2s(pairs: Iterable[tuple[int, int]]) -> dg.MetadataValue:
    """Partition keys (``x|y``) of quadrants or cells, as metadata."""
    return dg.MetadataValue.json([f"{a}|{b}" for a, b in pairs])


#: Largest inline thumbnail, as base64 characters: every preview lives in the event log of the Dagster instance,
#: so it stays a glance (the full image is a link to the console's ``/api/blob/<sha256>``).
THUMBNAIL_MAX_B64 = 2048


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    # Level 9 without Pillow's ``optimize`` (which tries every filter): a third of the time for the same bytes.
    im.save(buf, format="PNG", compress_level=9)
    return base64.b64encode(buf.getvalue()).decode()


def thumbnail_md(
    png: bytes, *, max_px: int = 160, title: str = "preview", link: str | None = None
) -> dg.MetadataValue:
    """A tiny inline preview for the UI (nearest-neighbour, so pixel art stays crisp; ≤ ``THUMBNAIL_MAX_B64``
    characters: 32 colours, shrunk until it fits), and a link to the full image when ``link`` is given."""
    with Image.open(io.BytesIO(png)) as src:
        im = src.convert("RGB")
    scale = min(1.0, max_px / max(im.size))
    small = im.resize(
        (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST
    )
    # A glance needs few colours; quantised once, and only the pixels shrink after that.
    small = small.quantize(32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    b64 = _png_b64(small)
    while len(b64) > THUMBNAIL_MAX_B64 and max(small.size) > 8:
        # Bytes go roughly with the area: aim just under the limit rather than stepping down blindly.
        f = min(0.9, 0.95 * (THUMBNAIL_MAX_B64 / len(b64)) ** 0.5)
        small = small.resize(
            (max(1, int(small.width * f)), max(1, int(small.height * f))), Image.Resampling.NEAREST
        )
        b64 = _png_b64(small)
    md = f"![{title}](data:image/png;base64,{b64})" if len(b64) <= THUMBNAIL_MAX_B64 else ""
    if link:
        md += f"\n\n[{title}: full size]({link})"
    return dg.MetadataValue.md(md or f"({title}: no preview)")


def blob_link(console_url: str, sha256: str) -> str:
    """The console's URL of a stored image (``isonyc serve`` answers ``/api/blob/<sha256>`` without a token)."""
    return f"{console_url.rstrip('/')}/api/blob/{sha256}"


def combined_version(shas: Mapping[str, str]) -> dg.DataVersion:
    """Data version of a run step: the image hash for one partition, a hash of all (key, hash) pairs for a range.

    Dagster records one data version per materialization step; ``PartitionRun.outputs`` therefore follows a range
    run's step materialization with one materialization per partition carrying that partition's own hash.
    """
    if len(shas) == 1:
        return dg.DataVersion(next(iter(shas.values())))
    h = hashlib.sha256()
    for k in sorted(shas):
        h.update(f"{k}={shas[k]};".encode())
    return dg.DataVersion(h.hexdigest())


def _input_provenance(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Data-version provenance tags of this asset's inputs, as Dagster writes them on its own materializations:
    the code version, and per upstream asset its latest materialization's data version and storage id (the cursor
    from which later upstream partition versions count as changes). Read when the run starts, like Dagster does."""
    key = context.asset_key
    spec = context.assets_def.specs_by_key[key]
    tags = {CODE_VERSION_TAG: context.assets_def.code_versions_by_key.get(key) or context.run.run_id}
    parents = [d.asset_key for d in spec.deps]
    records = (
        {r.asset_entry.asset_key: r for r in context.instance.get_asset_records(parents)} if parents else {}
    )
    for parent in parents:
        rec = records.get(parent)
        last = rec.asset_entry.last_materialization_record if rec is not None else None
        version = None
        if last is not None and last.asset_materialization is not None:
            version = (
                last.asset_materialization.tags.get(DATA_VERSION_TAG)
                if last.asset_materialization.tags
                else None
            )
        tags[get_input_data_version_tag(parent)] = version or DEFAULT_DATA_VERSION.value
        tags[get_input_event_pointer_tag(parent)] = (
            str(last.storage_id) if last is not None else NULL_EVENT_POINTER
        )
    return tags


#: Shown on a range run's step materialization: Dagster keeps one metadata set and one data version per run step,
#: so each partition's own previews, provenance and data version follow as that partition's own materialization.
PER_PARTITION_NOTE = (
    "this run covered several partitions: each partition's own previews, provenance and data version (its content "
    "hash) are on its own materialization, logged right after this one (open the partition)"
)
#: The older note of ``PartitionRun.result`` (per-partition metadata as observations).
PER_PARTITION_OBSERVATION_NOTE = (
    "this run covered several partitions: this partition's previews and provenance are its AssetObservation "
    "(Events tab, or 'View all historical events' on the partition)"
)


def observe(context: dg.AssetExecutionContext, partition: str, metadata: dict) -> None:
    """Per-partition metadata in a multi-partition run (a MaterializeResult has one set for the whole run)."""
    context.log_event(
        dg.AssetObservation(asset_key=context.asset_key, partition=partition, metadata=metadata)
    )


#: Run tag (set by the wave scheduler on its range runs): ``missing`` = do only the partitions of the range that are
#: not materialized yet and whose inputs are ready; skip the others (see ``PartitionRun``).
FILL_TAG = "isonyc/fill"


class PartitionRun:
    """The partitions of one run (one key or a key range), and what the asset reports about each.

    ``outputs`` gives every partition its own data version (its content hash) and metadata, also in range runs:
    identical output never marks a dependant stale, and a changed partition marks exactly its own dependants.

    A *fill* run (``FILL_TAG``) iterates only the partitions of its range that are not materialized yet, and the
    asset reports the ones whose inputs are not there yet with ``wait`` instead of failing: the scheduler's range
    covers a whole wave of ready keys and passes over the keys between them. If nothing at all was ready, the run
    fails with the reasons, so a key the scheduler thinks ready but the store cannot serve still cools down and is
    given up, never requested forever.
    """

    def __init__(self, context: dg.AssetExecutionContext, *, map_quadrants: int) -> None:
        self.context = context
        keys = list(context.partition_keys)
        #: A range run: partitions report their own materializations (``emit``/``outputs``).
        self.is_range = len(keys) > 1
        self.fill = self.is_range and context.run.tags.get(FILL_TAG) == "missing"
        self.already_done = 0
        if self.fill:
            done = context.instance.get_materialized_partitions(context.asset_key)
            self.already_done = sum(1 for k in keys if k in done)
            keys = [k for k in keys if k not in done]
        self.keys: list[str] = keys
        self.pairs = [parse_key2(k) for k in keys]
        self.shas: dict[str, str] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.waiting: dict[str, str] = {}
        self._emitted: set[str] = set()
        # Dagster reads its inputs' versions before the step runs; so do we (a concurrent upstream run after this
        # point must still make this asset stale).
        single = len(context.assets_def.keys) == 1  # a multi-asset step has no one asset_key to describe
        self._provenance = _input_provenance(context) if self.is_range and single else {}
        #: Whether per-partition inline previews are worth their event-log size.
        self.thumbnails = len(keys) <= THUMBNAILS_UP_TO and map_quadrants <= THUMBNAIL_MAP_UP_TO

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int]]]:
        return iter(zip(self.keys, self.pairs, strict=True))

    def __len__(self) -> int:
        return len(self.keys)

    def wait(self, key: str, reason: str) -> None:
        """Fill runs: a partition whose inputs are not there yet; left for a later run (see the class)."""
        self.waiting[key] = reason

    def fill_summary(self) -> str:
        """One line for the run's log: what the fill run did and skipped."""
        return (
            f"{len(self.shas)} partition(s) done, {self.already_done} already materialized, "
            f"{len(self.waiting)} waiting for their inputs"
        )

    def _check_fill(self) -> None:
        self.context.log.info(self.fill_summary())
        if not self.shas and self.waiting:
            reasons = list(self.waiting.items())
            raise dg.Failure(
                description="nothing in this range was ready: "
                + "; ".join(f"{k}: {r}" for k, r in reasons[:10]),
                metadata={"waiting": dg.MetadataValue.json(dict(reasons[:200]))},
                allow_retries=False,
            )

    def record(self, key: str, sha256: str, metadata: dict[str, Any]) -> None:
        """A partition done: its output hash (its data version) and its own metadata."""
        self.shas[key] = sha256
        self.meta[key] = metadata
        raise_if_stopping(self.context.instance, self.context.run.run_id)

    def result(self, metadata: dict[str, Any], **kwargs: Any) -> dg.MaterializeResult:
        """The run's materialization with one data version for the whole run step (range runs log each partition's
        metadata as an observation). Prefer ``outputs``, which gives each partition its own data version."""
        meta = dict(metadata)
        if not self.is_range:
            meta.update(next(iter(self.meta.values()), {}))
        else:
            for key, m in self.meta.items():
                observe(self.context, key, m)
            meta["per_partition"] = PER_PARTITION_OBSERVATION_NOTE
        version = combined_version(self.shas) if self.shas else None
        return dg.MaterializeResult(metadata=meta, data_version=version, **kwargs)

    def emit(self, key: str) -> Iterator[dg.AssetMaterialization]:
        """Range runs: partition ``key``'s own materialization now, as soon as it is done, so the scheduler can start
        its dependants while the rest of the run still works (an asset with ``output_required=False`` that ends with
        ``outputs(streamed=True)``). Single-partition runs: nothing (their one materialization ends the run)."""
        if self.is_range and key not in self._emitted:
            self._emitted.add(key)
            yield self._partition_materialization(key)

    def _partition_materialization(self, key: str) -> dg.AssetMaterialization:
        tags = {
            **self._provenance,
            DATA_VERSION_TAG: self.shas[key],
            DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
        }
        return dg.AssetMaterialization(
            asset_key=self.context.asset_key, partition=key, metadata=self.meta[key], tags=tags
        )

    def outputs(
        self,
        metadata: dict[str, Any],
        *,
        check_results: Iterable[dg.AssetCheckResult] = (),
        streamed: bool = False,
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        """The run's materialization, then (range runs) one materialization per partition done, carrying that
        partition's own metadata and its content hash as data version with Dagster's provenance tags, so the
        stale-status resolver compares per partition. The asset body must ``yield from`` this.

        ``streamed`` (range runs of an asset with ``output_required=False``): no materialization of the whole range
        (it would cover partitions that were not done, with a combined data version), only the partitions not yet
        ``emit``-ted."""
        if self.fill:
            self._check_fill()
        if streamed and self.is_range:
            self.context.log.info(", ".join(f"{k}: {v}" for k, v in metadata.items()))
            for key in self.shas:
                yield from self.emit(key)
            yield from check_results
            return
        meta = dict(metadata)
        if not self.is_range:
            meta.update(next(iter(self.meta.values()), {}))
            version = next(iter(self.shas.values()), None)
            yield dg.MaterializeResult(
                metadata=meta,
                data_version=dg.DataVersion(version) if version else None,
                check_results=list(check_results),
            )
            return
        meta["per_partition"] = PER_PARTITION_NOTE
        yield dg.MaterializeResult(
            metadata=meta,
            data_version=combined_version(self.shas) if self.shas else None,
            check_results=list(check_results),
        )
        for key in self.shas:
            yield self._partition_materialization(key)
