"""``isonyc water fill|replace-color``: the original's water repair tools on stored generations.

Each repaired quadrant becomes a new active version (the previous one is kept, so ``activate`` undoes a repair).
"""

from __future__ import annotations

import argparse
import io
import json
import math

import numpy as np
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.water import fill_water, parse_color, soft_replace_color
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project

#: Most quadrants one ``water fill`` may repair (each becomes a new stored version): a 100×100 rectangle. The
#: rectangle is checked before the store is opened or a key list is built, so a typo cannot run for hours.
MAX_FILL_QUADRANTS = 10_000


class WaterCliError(IsonycError, ValueError):
    """A water repair request cannot be carried out as given; the message says what to change."""


def repair_rect(args: argparse.Namespace, config: ProjectConfig) -> QuadRect:
    """The quadrants a water command repairs, checked (inside the map, at most MAX_FILL_QUADRANTS)."""
    x1, y1 = args.to if getattr(args, "to", None) else (args.x, args.y)
    geometry = MapGeometry(config.map)
    geometry.check_quadrant(args.x, args.y)
    geometry.check_quadrant(x1, y1)
    rect = QuadRect(min(args.x, x1), min(args.y, y1), max(args.x, x1), max(args.y, y1))
    n = rect.area
    if n > MAX_FILL_QUADRANTS:
        raise WaterCliError(
            f"the rectangle ({args.x}, {args.y})…({x1}, {y1}) holds {n:,} quadrants; one fill repairs at most "
            f"{MAX_FILL_QUADRANTS:,}: fill it in smaller rectangles"
        )
    return rect


def run_water_cli(args: argparse.Namespace, config: ProjectConfig) -> int:
    colour = parse_color(args.color)
    if args.water_command == "replace-color":
        parse_color(args.target)
        if not (math.isfinite(args.softness) and args.softness >= 0):
            raise WaterCliError(f"--softness must be a finite number ≥ 0, got {args.softness}")
    rect = repair_rect(args, config)
    keys = list(rect.keys())
    store = Project(config).store
    results = []
    for x, y in keys:
        current = store.active(layers.GENERATION, x, y)
        if current is None:
            results.append({"quadrant": [x, y], "skipped": "no generation yet"})
            continue
        rgb = decode_rgb(store.get_blob(current.sha256))
        if args.water_command == "fill":
            region = None
            if args.mask_only:
                mask_png = store.get_tile(layers.WATER_MASK, x, y)
                if mask_png is None:
                    raise WaterCliError(
                        f"quadrant ({x}, {y}) has no water mask: materialize water_mask first"
                    )
                with Image.open(io.BytesIO(mask_png)) as m:
                    region = np.asarray(m.convert("L"))
            out = fill_water(rgb, region, colour)
            prov = {"repair": "fill_water", "color": list(colour), "mask_only": bool(args.mask_only)}
        else:
            out = soft_replace_color(rgb, parse_color(args.target), colour, args.softness)
            prov = {
                "repair": "soft_replace_color",
                "target": list(parse_color(args.target)),
                "color": list(colour),
                "softness": args.softness,
            }
        prov |= {
            "from_version": current.version,
            "from_sha256": current.sha256,
            "step": current.provenance.get("step"),
        }
        changed = int(np.count_nonzero(np.any(out != rgb, axis=-1)))
        v = store.put_tile(layers.GENERATION, x, y, png_bytes(out), prov)
        results.append(
            {"quadrant": [x, y], "version": v.version, "pixels_changed": changed, "sha256": v.sha256}
        )
    print(json.dumps({"repaired": results}, indent=2))
    return 0
