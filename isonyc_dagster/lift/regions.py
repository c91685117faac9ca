"""Named regions: a name → a rectangle of quadrants, the unit a 3D scene is lifted from.

The registry is one small JSON file (``[lift] regions_file``, default ``data/regions.json``), rewritten atomically
on every change, so a reader sees the old list or the new one. Names are the ``scene_3d`` asset's dynamic partition
keys, so they are restricted to what is safe as a Dagster key, a directory name and a URL path segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.store.base import TileStore

if TYPE_CHECKING:
    from isonyc_dagster.project import Project

#: Lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 64 characters.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: The largest region in quadrants: a scene holds one splat per pixel (or per 2×2), so 64 quadrants are ~4M splats.
MAX_QUADRANTS = 64
_FORMAT = 1


class RegionError(IsonycError, ValueError):
    """A region name or rectangle is invalid, unknown, or the registry file is unreadable."""


@dataclass(frozen=True)
class Region:
    """A named quadrant rectangle: ``w × h`` quadrants from ``(x0, y0)``."""

    name: str
    x0: int
    y0: int
    w: int
    h: int

    @property
    def rect(self) -> QuadRect:
        return QuadRect(self.x0, self.y0, self.x0 + self.w - 1, self.y0 + self.h - 1)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "x0": self.x0, "y0": self.y0, "w": self.w, "h": self.h}


def check_name(name: str) -> str:
    """``name`` if it is a valid region name, else a ``RegionError`` saying what is allowed."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegionError(
            f"invalid region name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. 'times-square')"
        )
    return name


def check_rect(name: str, x0: int, y0: int, w: int, h: int, quadrants: Iterable[tuple[int, int]]) -> Region:
    """A ``Region`` whose every quadrant lies in ``quadrants`` (the map's), else a ``RegionError``."""
    for label, v in (("x0", x0), ("y0", y0), ("w", w), ("h", h)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise RegionError(f"region {name!r}: {label} must be an integer, got {v!r}")
    if w < 1 or h < 1:
        raise RegionError(f"region {name!r}: width and height must be at least 1 quadrant (got w={w}, h={h})")
    if w * h > MAX_QUADRANTS:
        raise RegionError(
            f"region {name!r}: {w}×{h} = {w * h} quadrants is more than {MAX_QUADRANTS}; split it into smaller regions"
        )
    region = Region(check_name(name), x0, y0, w, h)
    have = set(quadrants)
    keys = list(region.rect.keys())
    outside = [k for k in keys if k not in have]
    if outside:
        xs = [k[0] for k in have] or [0]
        ys = [k[1] for k in have] or [0]
        shown = ", ".join(f"({x}, {y})" for x, y in outside[:4]) + (" …" if len(outside) > 4 else "")
        raise RegionError(
            f"region {name!r}: quadrants {shown} are outside the map's quadrants "
            f"(x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}); choose a rectangle inside the bounds "
            "(`isonyc bounds --keys` lists them)"
        )
    return region


class RegionRegistry:
    """The named regions of one project, persisted in ``path`` (JSON)."""

    def __init__(self, path: str | os.PathLike[str], quadrants: Iterable[tuple[int, int]]) -> None:
        self.path = Path(path)
        self._quadrants = frozenset(quadrants)

    def _read(self) -> dict[str, Region]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RegionError(f"region registry {self.path} cannot be read: {e.strerror or e}") from None
        try:
            data = json.loads(text)
            return {r["name"]: Region(r["name"], r["x0"], r["y0"], r["w"], r["h"]) for r in data["regions"]}
        except (ValueError, KeyError, TypeError) as e:
            raise RegionError(
                f"region registry {self.path} is damaged ({type(e).__name__}: {e}); fix or delete the file "
                "and add the regions again"
            ) from None

    def _write(self, regions: dict[str, Region]) -> None:
        body = {"format": _FORMAT, "regions": [regions[n].to_json() for n in sorted(regions)]}
        atomic_write(self.path, (json.dumps(body, indent=2) + "\n").encode())

    def list(self) -> list[Region]:
        """Every region, sorted by name."""
        regions = self._read()
        return [regions[n] for n in sorted(regions)]

    def get(self, name: str) -> Region:
        """The region called ``name``; an unknown name is a ``RegionError`` listing the known ones."""
        regions = self._read()
        if name not in regions:
            known = ", ".join(sorted(regions)) or "none yet"
            raise RegionError(
                f"unknown region {name!r} (known: {known}); add it with `isonyc region add {name} "
                "--x0 X --y0 Y --w W --h H`"
            )
        return regions[name]

    def add(self, name: str, x0: int, y0: int, w: int, h: int) -> Region:
        """Register a region. Adding the same rectangle again is a no-op; another rectangle under a known
        name is an error (remove it first), so a scene never silently changes what it shows."""
        region = check_rect(name, x0, y0, w, h, self._quadrants)
        regions = self._read()
        old = regions.get(name)
        if old is not None and old != region:
            raise RegionError(
                f"region {name!r} already exists as x0={old.x0} y0={old.y0} w={old.w} h={old.h}; "
                f"remove it first (`isonyc region rm {name}`) or choose another name"
            )
        if old is None:
            regions[name] = region
            self._write(regions)
        return region

    def remove(self, name: str) -> Region:
        """Forget a region (its scene files stay); returns what was removed."""
        region = self.get(check_name(name))
        regions = self._read()
        regions.pop(name, None)
        self._write(regions)
        return region


def project_registry(project: Project) -> RegionRegistry:
    """The project's registry (``[lift] regions_file``) over its quadrants; a project without ``[lift]`` is an error."""
    if project.config.lift is None:
        raise RegionError(
            "this project has no [lift] section; add `[lift]` to its config to use named regions"
        )
    return RegionRegistry(project.config.lift.regions_file, project.quadrants.keys)


def region_inputs(store: TileStore, region: Region) -> dict[str, Any]:
    """What a region's scene is lifted from: per quadrant the active ``generation`` and ``render`` sha256s (and the
    render's aux buffers), plus ``missing``, the quadrants without a generation yet."""
    rect = region.rect
    gen = {(v.x, v.y): v.sha256 for v in store.list_active(layers.GENERATION, bbox=rect)}
    ren = {(v.x, v.y): v for v in store.list_active(layers.RENDER, bbox=rect)}
    keys = list(rect.keys())
    tiles = {}
    for x, y in keys:
        r = ren.get((x, y))
        tiles[f"{x},{y}"] = {
            "generation": gen.get((x, y)),
            "render": r.sha256 if r else None,
            "aux": r.provenance.get("aux_sha256") if r else None,
        }
    return {"tiles": tiles, "missing": [k for k in keys if k not in gen]}


def inputs_fingerprint(inputs: dict[str, Any], settings: dict[str, Any]) -> str:
    """A short hash of a region's inputs and lift settings: equal fingerprints give the same scene."""
    body = json.dumps({"tiles": inputs["tiles"], "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]
