"""The tile-store interface every backend (local disk, GCS) implements.

Model
- A *blob* is immutable bytes addressed by their sha256 (hex). PNG tiles, templates, model outputs,
  render auxiliary buffers (.npz) are all blobs.
- A *tile version* binds a blob to (layer, x, y) with provenance (JSON) and a monotonically increasing
  version number. Exactly one version per (layer, x, y) is *active*; writing a new version activates it
  but never deletes older ones.
- Per-quadrant *flags*: water (tri-state), starred, flagged, reference.

Guarantees: a PNG that does not decode, or whose size is not the expected one, is refused with
``StoreError`` before anything is written. Blob writes are atomic (temp + rename); ``put_tiles`` commits
several tiles in one transaction (all or nothing). Safe for concurrent writers (threads and processes).
Reads check every blob against its sha256 and never return corrupt bytes (``CorruptBlobError``); writing a
blob whose stored copy is damaged replaces that copy.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from isonyc_dagster.errors import IsonycError


class StoreError(IsonycError, RuntimeError):
    """Bad input to the store (corrupt or wrong-size PNG, unknown version, ...)."""


class CorruptBlobError(StoreError):
    """A stored blob's bytes do not hash to its name: it was damaged after it was written."""

    def __init__(self, message: str, *, sha256: str, found_sha256: str, where: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
        self.found_sha256 = found_sha256
        self.where = where


class ReadOnlyStoreError(StoreError):
    """A write to a store that is open read-only."""


class Water(IntEnum):
    UNKNOWN = -1
    ALL_LAND = 0
    WATER_EDGE = 1
    ALL_WATER = 2


@dataclass(frozen=True, slots=True)
class TileVersion:
    layer: str
    x: int
    y: int
    version: int  # 1, 2, 3, ... per (layer, x, y)
    sha256: str
    created_at: float  # unix seconds
    provenance: dict[str, Any]
    active: bool


@dataclass(frozen=True, slots=True)
class QuadrantFlags:
    x: int
    y: int
    water: Water = Water.UNKNOWN
    starred: bool = False
    flagged: bool = False
    reference: bool = False


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """The flags one ``set_flags`` call changes; ``None`` keeps the current value."""

    water: Water | None = None
    starred: bool | None = None
    flagged: bool | None = None
    reference: bool | None = None

    def apply(self, cur: QuadrantFlags) -> QuadrantFlags:
        """``cur`` with this update applied."""
        return QuadrantFlags(
            cur.x,
            cur.y,
            cur.water if self.water is None else Water(self.water),
            cur.starred if self.starred is None else self.starred,
            cur.flagged if self.flagged is None else self.flagged,
            cur.reference if self.reference is None else self.reference,
        )


@dataclass(frozen=True, slots=True)
class TileWrite:
    """One tile of an atomic multi-tile write."""

    layer: str
    x: int
    y: int
    png: bytes
    provenance: dict[str, Any]


class TileStore(abc.ABC):
    """Abstract tile store. See module docstring for the guarantees."""

    #: Expected (width, height) of PNG tiles per layer; layers not listed are only checked for decodability.
    tile_size: tuple[int, int] = (512, 512)

    # --- blobs ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_blob(self, data: bytes, *, ext: str = "png") -> str:
        """Store immutable bytes; return their sha256 hex. Idempotent."""

    @abc.abstractmethod
    def get_blob(self, sha256: str) -> bytes:
        """Bytes of a blob; ``StoreError`` if unknown."""

    def has_blob(self, sha256: str) -> bool:
        return self._find_blob(sha256) is not None

    @abc.abstractmethod
    def _find_blob(self, sha256: str) -> object | None:
        """Where blob ``sha256`` lies (a path, an object name), or ``None``; ``StoreError`` on a bad id."""

    # --- tiles ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_tiles(
        self, writes: Sequence[TileWrite], *, expect_size: tuple[int, int] | None = None
    ) -> list[TileVersion]:
        """Validate every PNG, store blobs, add one new active version per tile, in one transaction.

        ``expect_size`` defaults to ``self.tile_size``. Idempotent: if the active version of a tile
        already has the same sha256 and provenance, no new version is added and it is returned.
        """

    def put_tile(
        self,
        layer: str,
        x: int,
        y: int,
        png: bytes,
        provenance: dict[str, Any] | None = None,
        *,
        expect_size: tuple[int, int] | None = None,
    ) -> TileVersion:
        return self.put_tiles([TileWrite(layer, x, y, png, provenance or {})], expect_size=expect_size)[0]

    @abc.abstractmethod
    def active(self, layer: str, x: int, y: int) -> TileVersion | None:
        """The active version of a tile, or ``None``."""

    def get_tile(self, layer: str, x: int, y: int) -> bytes | None:
        """PNG bytes of the active version, or ``None``."""
        v = self.active(layer, x, y)
        return None if v is None else self.get_blob(v.sha256)

    @abc.abstractmethod
    def versions(self, layer: str, x: int, y: int) -> list[TileVersion]:
        """Every version of a tile, oldest first."""

    @abc.abstractmethod
    def activate(self, layer: str, x: int, y: int, version: int) -> TileVersion:
        """Make an older (or newer) version active again."""

    @abc.abstractmethod
    def list_active(self, layer: str, *, bbox: tuple[int, int, int, int] | None = None) -> list[TileVersion]:
        """Active versions in a layer, optionally within an inclusive quadrant bbox (x0, y0, x1, y1).

        ``bbox`` is a ``geo.boxes.QuadRect`` or a plain tuple in the same order.
        """

    def active_map(self, layer: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], TileVersion]:
        """Active versions for many keys at once (missing keys are absent)."""
        out = {}
        for x, y in keys:
            v = self.active(layer, x, y)
            if v is not None:
                out[(x, y)] = v
        return out

    # --- flags ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def flags(self, x: int, y: int) -> QuadrantFlags: ...

    def set_flags(
        self,
        x: int,
        y: int,
        *,
        water: Water | None = None,
        starred: bool | None = None,
        flagged: bool | None = None,
        reference: bool | None = None,
    ) -> QuadrantFlags:
        """Change the given flags of quadrant (x, y) (``None`` keeps a flag); returns all its flags."""
        return self._set_flags(x, y, FlagUpdate(water, starred, flagged, reference))

    @abc.abstractmethod
    def _set_flags(self, x: int, y: int, update: FlagUpdate) -> QuadrantFlags:
        """``set_flags`` with its arguments as the caller passed them: the backend checks them."""

    @abc.abstractmethod
    def list_flags(
        self, *, reference: bool | None = None, starred: bool | None = None, flagged: bool | None = None
    ) -> list[QuadrantFlags]: ...

    def checkpoint(self) -> dict[str, int]:
        """Make the index self-contained on disk (end of a pipeline run); backends without one do nothing."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
