"""Contact sheets of training images: what a person looks at to judge pairs and examples."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

LABEL_PX = 14
GAP_PX = 8


def grid_png(cells: Sequence[tuple[str, Sequence[bytes]]], *, cell: int = 256, cols: int = 2) -> bytes:
    """A PNG grid: each cell a label over its images side by side (nearest-neighbour to ``cell``², pixel art stays
    crisp), ``cols`` cells per line."""
    width = max((len(imgs) for _, imgs in cells), default=1)
    lines = max(1, (len(cells) + cols - 1) // cols)
    grid = Image.new(
        "RGB", (cols * (width * cell + GAP_PX) - GAP_PX, lines * (cell + LABEL_PX)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(grid)
    for i, (label, imgs) in enumerate(cells):
        ox, oy = (i % cols) * (width * cell + GAP_PX), (i // cols) * (cell + LABEL_PX)
        for j, png in enumerate(imgs):
            with Image.open(io.BytesIO(png)) as im:
                small = im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(small, (ox + j * cell, oy + LABEL_PX))
        draw.text((ox + 2, oy + 1), label, fill=(0, 0, 0))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
