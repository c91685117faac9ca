"""The static map page (OpenSeadragon over the DZI pyramid) and ``write_viewer`` to install it.

OpenSeadragon comes from npm (``npm ci`` at the repository root installs it into node_modules); it is
copied into each exported map directory, never into the repository.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.publish.layout import PyramidError
from isonyc_dagster.publish.manifest import read_sidecar

__all__ = ["ViewerError", "find_openseadragon", "write_viewer"]

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[2]
ENV_VAR = "ISONYC_OPENSEADRAGON_DIR"
_OSD_SUBDIR = Path("node_modules/openseadragon/build/openseadragon")


class ViewerError(IsonycError, RuntimeError):
    """The viewer cannot be written (OpenSeadragon missing, no pyramid in the directory)."""


def _candidates() -> list[Path]:
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    out += [_REPO / _OSD_SUBDIR, Path.cwd() / _OSD_SUBDIR]
    return out


def find_openseadragon(openseadragon_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding ``openseadragon.min.js`` and ``images/`` (the npm build). Searched: the
    argument if given, else ``$ISONYC_OPENSEADRAGON_DIR``, the repository's and the working directory's
    node_modules."""
    tried = [Path(openseadragon_dir)] if openseadragon_dir is not None else _candidates()
    for d in tried:
        if (d / "openseadragon.min.js").is_file() and (d / "images").is_dir():
            return d
    raise ViewerError(
        "OpenSeadragon not found (looked in " + ", ".join(str(d) for d in tried) + "). "
        f"Run `npm ci` in the repository root {_REPO} (needs Node.js), or set {ENV_VAR} to a directory "
        "holding openseadragon.min.js and images/."
    )


def write_viewer(
    out_dir: str | os.PathLike[str],
    dzi_name: str | None = None,
    *,
    openseadragon_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Install the viewer next to pyramid ``dzi_name`` in ``out_dir``; returns the path of index.html.

    Writes index.html, viewer.js, viewer.css, layers.js and openseadragon/ (the npm build, minified JS + button
    images + licence). Serve the directory (``isonyc_dagster.publish.serve.serve``) and open its URL."""
    out = Path(out_dir)
    try:
        side = read_sidecar(out, dzi_name)
    except PyramidError as e:
        raise ViewerError(f"cannot write the viewer: {e}") from e
    osd = find_openseadragon(openseadragon_dir)
    page = (_HERE / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{TITLE}}", html.escape(side["title"])).replace("{{MAP}}", html.escape(side["name"]))
    # Static files that every export rewrites: no fsync (dozens of small files, nothing lost on a crash).
    atomic_write(out / "index.html", page.encode(), fsync=False)
    for f in ("viewer.js", "viewer.css", "layers.js", "scenes.js", *CONSOLE_FILES):
        atomic_write(out / f, (_HERE / f).read_bytes(), fsync=False)
    dst = out / "openseadragon"
    (dst / "images").mkdir(parents=True, exist_ok=True)
    atomic_write(dst / "openseadragon.min.js", (osd / "openseadragon.min.js").read_bytes(), fsync=False)
    for img in (osd / "images").iterdir():
        if img.is_file():
            atomic_write(dst / "images" / img.name, img.read_bytes(), fsync=False)
    # BSD-3 asks redistributions to keep the licence: node_modules/openseadragon/LICENSE.txt.
    for lic in (osd / "LICENSE.txt", osd.parents[1] / "LICENSE.txt"):
        if lic.is_file():
            shutil.copyfile(lic, dst / "LICENSE.txt")
            break
    return out / "index.html"


#: The map console's page parts (idle when the map is served without ``isonyc serve``'s console).
CONSOLE_FILES = ("console.js", "console.css", "bounds.js")
#: What ``write_viewer`` installs, relative to the map directory.
VIEWER_FILES = (
    "index.html",
    "viewer.js",
    "viewer.css",
    "layers.js",
    "scenes.js",
    *CONSOLE_FILES,
    "openseadragon/openseadragon.min.js",
)


def viewer_missing(out_dir: str | os.PathLike[str]) -> str | None:
    """Which viewer file the map directory lacks (``None`` when complete, or when no viewer can be written
    here because OpenSeadragon is not installed: then the map is the pyramid alone)."""
    try:
        find_openseadragon()
    except ViewerError:
        return None
    missing = [f for f in VIEWER_FILES if not (Path(out_dir) / f).is_file()]
    return f"the viewer lacks {', '.join(missing)}" if missing else None
