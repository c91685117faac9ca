"""A small static HTML report per phase: tables and before/after images (PNG files beside the page)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.images import png_bytes

__all__ = ["Report"]

_CSS = (
    "body{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
    "figure{display:inline-block;margin:6px}img{image-rendering:pixelated;border:1px solid #999}"
)


class Report:
    """Collects sections, then ``write()``s ``<dir>/<name>.html`` with its images under ``<dir>/<name>/``."""

    def __init__(self, directory: str | Path, name: str, title: str) -> None:
        self.dir = Path(directory)
        self.name = name
        self.title = title
        self._body: list[str] = []
        self._n = 0

    def heading(self, text: str) -> None:
        self._body.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self._body.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        def cell(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
        self._body.append(f"<table><tr>{head}</tr>{body}</table>")

    def images(self, items: Sequence[tuple[str, np.ndarray]], zoom: int = 2) -> list[Path]:
        """Save each (caption, RGB) as a PNG and show them in a row; returns the PNG paths."""
        figs, paths = [], []
        for caption, rgb in items:
            self._n += 1
            rel = f"{self.name}/{self._n:03d}.png"
            path = self.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, png_bytes(np.ascontiguousarray(rgb)), fsync=False)
            paths.append(path)
            w = rgb.shape[1] * zoom
            figs.append(
                f'<figure><img src="{html.escape(rel)}" width="{w}"><figcaption>{html.escape(caption)}</figcaption>'
                "</figure>"
            )
        self._body.append("<div>" + "".join(figs) + "</div>")
        return paths

    def write(self) -> Path:
        page = (
            f"<!doctype html><meta charset=utf-8><title>{html.escape(self.title)}</title><style>{_CSS}</style>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self._body)
        )
        path = self.dir / f"{self.name}.html"
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, page.encode(), fsync=False)
        return path
