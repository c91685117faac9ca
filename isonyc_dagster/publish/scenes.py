"""3D scenes in a map directory: ``scenes/<region>/`` (the lift's outputs), ``scenes/index.json`` (what the map
viewer lists as "3D" links) and the splat viewer page (``splat.html``: three.js + Spark from npm).

A scene is installed whole: its files are written to a hidden directory beside it and swapped in by renames, so a
viewer never loads half a ``.ply``. three.js and Spark are copied from node_modules into the map directory (like
OpenSeadragon in ``viewer``), never into the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write

__all__ = [
    "SCENES_DIR",
    "SceneError",
    "find_splat_libs",
    "install_scene",
    "read_scene_index",
    "scene_staging_dir",
    "write_splat_viewer",
]

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
NODE_MODULES_ENV = "ISONYC_NODE_MODULES"
SCENES_DIR = "scenes"
INDEX = "index.json"
#: node_modules file → its path under the map directory's ``lib/`` (what splat.html's import map names).
_LIBS = {
    "three/build/three.module.js": "three/three.module.js",
    "three/build/three.core.js": "three/three.core.js",
    "three/examples/jsm/controls/OrbitControls.js": "three/addons/controls/OrbitControls.js",
    "three/examples/jsm/postprocessing/Pass.js": "three/addons/postprocessing/Pass.js",
    "three/LICENSE": "three/LICENSE",
    "@sparkjsdev/spark/dist/spark.module.min.js": "spark/spark.module.js",
    "@sparkjsdev/spark/LICENSE": "spark/LICENSE",
}
VIEWER_PAGES = ("splat.html", "splat.js")


class SceneError(IsonycError, RuntimeError):
    """A scene or the splat viewer cannot be installed (libraries missing, bad scene name, unreadable index)."""


def find_splat_libs(node_modules: str | os.PathLike[str] | None = None) -> Path:
    """The node_modules directory holding three and @sparkjsdev/spark: ``node_modules``, ``$ISONYC_NODE_MODULES``,
    the repository's or the working directory's."""
    if node_modules is not None:
        tried = [Path(node_modules)]
    else:
        tried = [Path(os.environ[NODE_MODULES_ENV])] if os.environ.get(NODE_MODULES_ENV) else []
        tried += [_REPO / "node_modules", Path.cwd() / "node_modules"]
    for d in tried:
        if all((d / f).is_file() for f in _LIBS):
            return d
    raise SceneError(
        "three.js and @sparkjsdev/spark not found (looked in " + ", ".join(str(d) for d in tried) + "). "
        f"Run `npm ci` in the repository root {_REPO} (needs Node.js), or set {NODE_MODULES_ENV}."
    )


def write_splat_viewer(
    map_dir: str | os.PathLike[str], node_modules: str | os.PathLike[str] | None = None
) -> Path:
    """Install ``splat.html``, ``splat.js`` and ``lib/`` (three.js, OrbitControls, Spark) into ``map_dir``; returns
    the page's path. Open ``splat.html?scene=<region>`` on a server of the directory (``isonyc serve``)."""
    nm = find_splat_libs(node_modules)
    out = Path(map_dir)
    for f in VIEWER_PAGES:
        atomic_write(out / f, (_HERE / "viewer" / f).read_bytes(), fsync=False)
    for src, dst in _LIBS.items():
        target = out / "lib" / dst
        # Skip unchanged copies: Spark is 2.7 MB and every scene materialization installs the viewer.
        if target.is_file() and target.stat().st_size == (nm / src).stat().st_size:
            continue
        atomic_write(target, (nm / src).read_bytes(), fsync=False)
    return out / "splat.html"


def scene_staging_dir(map_dir: str | os.PathLike[str], name: str) -> Path:
    """A fresh hidden directory beside ``scenes/<name>`` to write a scene into (``install_scene`` swaps it in)."""
    root = Path(map_dir) / SCENES_DIR
    d = root / f".{_check(name)}.{uuid.uuid4().hex[:8]}.tmp"
    d.mkdir(parents=True)
    return d


def _check(name: str) -> str:
    # The registry validates names; this guards the filesystem against anything else reaching it.
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise SceneError(f"invalid scene name {name!r}")
    return name


@contextlib.contextmanager
def _index_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".index.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_scene_index(map_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``scenes/index.json``: ``{"scenes": [{"name", "x0", "y0", "w", "h", "splats", ...}]}`` (empty when absent)."""
    path = Path(map_dir) / SCENES_DIR / INDEX
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"scenes": []}
    except (OSError, ValueError) as e:
        raise SceneError(
            f"scene index {path} is unreadable ({e}); delete it, the next scene rewrites it"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), list):
        raise SceneError(f"scene index {path} has no 'scenes' list; delete it, the next scene rewrites it")
    return data


def install_scene(map_dir: str | os.PathLike[str], name: str, staged: Path, entry: dict[str, Any]) -> Path:
    """Move the scene written in ``staged`` to ``scenes/<name>/`` (replacing the previous one) and list it in
    ``scenes/index.json`` with ``entry`` (its rectangle and figures); scenes whose directory is gone are dropped."""
    root = Path(map_dir) / SCENES_DIR
    final = root / _check(name)
    with _index_lock(root):
        old = root / f".{name}.{uuid.uuid4().hex[:8]}.old"
        if final.exists():
            final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        index = read_scene_index(map_dir)
        scenes = {
            s["name"]: s
            for s in index["scenes"]
            if isinstance(s, dict) and (root / str(s.get("name"))).is_dir()
        }
        scenes[name] = {
            **entry,
            "name": name,
            "ply": f"{SCENES_DIR}/{name}/gf.ply",
            "updated": round(time.time()),
        }
        body = {"format": 1, "scenes": [scenes[n] for n in sorted(scenes)]}
        atomic_write(root / INDEX, (json.dumps(body, indent=2) + "\n").encode(), fsync=False)
    return final
