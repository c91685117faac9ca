"""``isonyc water fill|replace-color``: the original's water repair tools on stored generations.

Each repaired quadrant becomes a new active version (the previous one is kept, so ``activate`` undoes a repair).
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.generate.water import fill_water, parse_color, soft_replace_color
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project


def run_water_cli(args: argparse.Namespace, config: ProjectConfig) -> int:
    store = Project(config).store
    colour = parse_color(args.color)
    if args.water_command == "fill":
        x1, y1 = args.to if args.to else (args.x, args.y)
        keys = [
            (x, y)
            for y in range(min(args.y, y1), max(args.y, y1) + 1)
            for x in range(min(args.x, x1), max(args.x, x1) + 1)
        ]
    else:
        keys = [(args.x, args.y)]
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
                    raise ValueError(f"quadrant ({x}, {y}) has no water mask: materialize water_mask first")
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
