"""A real 3D Tiles 1.1 tileset built from the project's own city model, and an HTTP server for it.

``build_tileset`` extrudes the city's buildings (roof, walls shaded by the direction they face) over a ground
plane, as unlit glTF binaries with per-vertex colours, placed on the WGS84 ellipsoid through the project's own
geometry (lat/lng of every vertex from ``MapGeometry``; ellipsoidal height = ground height + height above
ground). Two levels of detail: the root holds every building as its minimum rotated rectangle (a wrong
silhouette on purpose: a render that stops at the root fails the alignment tests), its 2×2 children hold the
true footprints. ``TileServer`` serves the directory from 127.0.0.1 with switchable faults (404s, stalls, a hook
called on each request) and counts requests.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pygltflib
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.polygon import orient

from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata.model import Building, City
from isonyc_dagster.photoreal.camera import lnglath_to_ecef

GROUND_RGB = (72, 112, 64)
SKY_RGB = (135, 206, 235)  # RenderSettings.background #87ceeb
_ROOF_BASE = np.array([196, 188, 176], float)
_WALL_BASE = np.array([214, 200, 178], float)
_LIGHT = np.array([-0.45, -0.75, 0.0]) / np.linalg.norm([-0.45, -0.75])  # from the south-south-west


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, float) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


class _Frame:
    """Local east-north-up frame at a ground point: the root tile's transform."""

    def __init__(self, geometry: MapGeometry, e: float, n: float, ground_height_m: float) -> None:
        self.geometry = geometry
        self.h0 = ground_height_m
        lng, lat = geometry.ground_to_lnglat(e, n)
        self.origin = lnglath_to_ecef(np.atleast_1d(lng), np.atleast_1d(lat), np.atleast_1d(ground_height_m))[
            0
        ]
        lam, phi = np.radians(float(lng)), np.radians(float(lat))
        east = np.array([-np.sin(lam), np.cos(lam), 0.0])
        north = np.array([-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)])
        up = np.array([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
        self.rot = np.stack([east, north, up])  # rows: local axes in ECEF

    def local(self, e: np.ndarray, n: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Map ground metres + height above ground → local ENU metres of this frame."""
        lng, lat = self.geometry.ground_to_lnglat(e, n)
        ecef = lnglath_to_ecef(lng, lat, self.h0 + np.asarray(h, float))
        return (ecef - self.origin) @ self.rot.T

    def transform(self) -> list[float]:
        m = np.eye(4)
        m[:3, :3] = self.rot.T
        m[:3, 3] = self.origin
        return [float(v) for v in m.T.ravel()]  # column-major


class _Mesh:
    def __init__(self) -> None:
        self.pos: list[np.ndarray] = []  # ground E, N, h per vertex
        self.col: list[np.ndarray] = []

    def add(self, en_h: np.ndarray, rgb: np.ndarray) -> None:
        self.pos.append(np.asarray(en_h, float))
        self.col.append(np.repeat(np.asarray(rgb, float)[None, :], len(en_h), axis=0))

    def add_polygon(self, poly: Polygon, h: float, rgb: np.ndarray) -> None:
        tris = shapely.get_parts(shapely.constrained_delaunay_triangles(poly))
        for t in tris:
            c = np.asarray(t.exterior.coords)[:3]
            self.add(np.c_[c, np.full(3, h)], rgb)

    def add_walls(self, poly: Polygon, base: float, top: float, rgb: np.ndarray) -> None:
        poly = orient(poly, 1.0)
        for ring in [poly.exterior, *poly.interiors]:
            c = np.asarray(ring.coords)
            a, b = c[:-1], c[1:]
            d = b - a
            length = np.hypot(d[:, 0], d[:, 1])
            ok = length > 1e-6
            a, b, d, length = a[ok], b[ok], d[ok], length[ok]
            normal = np.stack([d[:, 1], -d[:, 0]], axis=1) / length[:, None]  # outward (solid on the left)
            shade = 0.5 + 0.5 * np.clip(normal @ _LIGHT[:2], 0.0, 1.0)
            for (ax, ay), (bx, by), s in zip(a, b, shade, strict=True):
                quad = np.array(
                    [
                        [ax, ay, base],
                        [bx, by, base],
                        [bx, by, top],
                        [ax, ay, base],
                        [bx, by, top],
                        [ax, ay, top],
                    ]
                )
                self.add(quad, rgb * s)

    def glb(self, frame: _Frame, copyright: str) -> tuple[bytes, np.ndarray, np.ndarray]:
        """GLB bytes (glTF y-up) and the local ENU bounds (lo, hi) of its vertices."""
        p = np.concatenate(self.pos)
        loc = frame.local(p[:, 0], p[:, 1], p[:, 2])
        gl = np.stack([loc[:, 0], loc[:, 2], -loc[:, 1]], axis=1).astype(np.float32)  # ENU → glTF y-up
        col = _srgb_to_linear(np.concatenate(self.col)).astype(np.float32)
        pos_b, col_b = gl.tobytes(), col.tobytes()
        g = pygltflib.GLTF2(
            asset=pygltflib.Asset(version="2.0", copyright=copyright),
            scene=0,
            scenes=[pygltflib.Scene(nodes=[0])],
            nodes=[pygltflib.Node(mesh=0)],
            meshes=[
                pygltflib.Mesh(
                    primitives=[
                        pygltflib.Primitive(
                            attributes=pygltflib.Attributes(POSITION=0, COLOR_0=1), material=0
                        )
                    ]
                )
            ],
            materials=[
                pygltflib.Material(
                    pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(baseColorFactor=[1, 1, 1, 1]),
                    doubleSided=True,
                    extensions={"KHR_materials_unlit": {}},
                )
            ],
            extensionsUsed=["KHR_materials_unlit"],
            accessors=[
                pygltflib.Accessor(
                    bufferView=0,
                    componentType=pygltflib.FLOAT,
                    count=len(gl),
                    type=pygltflib.VEC3,
                    min=gl.min(axis=0).tolist(),
                    max=gl.max(axis=0).tolist(),
                ),
                pygltflib.Accessor(
                    bufferView=1, componentType=pygltflib.FLOAT, count=len(col), type=pygltflib.VEC3
                ),
            ],
            bufferViews=[
                pygltflib.BufferView(
                    buffer=0, byteOffset=0, byteLength=len(pos_b), target=pygltflib.ARRAY_BUFFER
                ),
                pygltflib.BufferView(
                    buffer=0, byteOffset=len(pos_b), byteLength=len(col_b), target=pygltflib.ARRAY_BUFFER
                ),
            ],
            buffers=[pygltflib.Buffer(byteLength=len(pos_b) + len(col_b))],
        )
        g.set_binary_blob(pos_b + col_b)
        return b"".join(g.save_to_bytes()), loc.min(axis=0), loc.max(axis=0)


def _building_colour(b: Building, base: np.ndarray) -> np.ndarray:
    tint = (zlib.crc32(b.id.encode()) % 41 - 20) / 255.0
    return np.clip(base * (1.0 + tint), 0, 255)


def _parts(b: Building) -> list[Polygon]:
    fp = b.footprint if b.footprint.is_valid else shapely.make_valid(b.footprint)
    return [g for g in shapely.get_parts(fp) if isinstance(g, Polygon) and g.area > 0]


def _add_building(mesh: _Mesh, b: Building, coarse: bool) -> None:
    base, top = max(b.base_m, 0.0), b.height_m
    if not (np.isfinite(top) and top > base):
        return
    parts = _parts(b)
    if coarse and parts:
        parts = [MultiPolygon(parts).minimum_rotated_rectangle]
    for poly in parts:
        if not isinstance(poly, Polygon) or poly.area <= 0:
            continue
        mesh.add_polygon(poly, top, _building_colour(b, _ROOF_BASE))
        mesh.add_walls(poly, base, top, _building_colour(b, _WALL_BASE))


def _add_ground(mesh: _Mesh, bounds: tuple[float, float, float, float], step_m: float = 60.0) -> None:
    x0, y0, x1, y1 = bounds
    xs = np.linspace(x0, x1, max(2, int(np.ceil((x1 - x0) / step_m)) + 1))
    ys = np.linspace(y0, y1, max(2, int(np.ceil((y1 - y0) / step_m)) + 1))
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            mesh.add_polygon(box(xs[i], ys[j], xs[i + 1], ys[j + 1]), 0.0, np.array(GROUND_RGB, float))


def _box(lo: np.ndarray, hi: np.ndarray, pad: float = 1.0) -> list[float]:
    c = (lo + hi) / 2.0
    h = (hi - lo) / 2.0 + pad
    return [*c.tolist(), h[0], 0, 0, 0, h[1], 0, 0, 0, h[2]]


def build_tileset(
    city: City, geometry: MapGeometry, out_dir: Path, ground_height_m: float, *, margin_m: float = 250.0
) -> Path:
    """Write ``tileset.json`` and its GLB tiles for ``city`` into ``out_dir``; returns the tileset path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bld = [b for b in city.buildings if _parts(b)]
    x0, y0, x1, y1 = shapely.union_all([b.footprint for b in bld]).bounds
    bounds = (x0 - margin_m, y0 - margin_m, x1 + margin_m, y1 + margin_m)
    frame = _Frame(geometry, (x0 + x1) / 2, (y0 + y1) / 2, ground_height_m)
    copyright = "Fixture; building footprints: NYC OTI"
    root_mesh = _Mesh()
    _add_ground(root_mesh, bounds, step_m=120.0)
    for b in bld:
        _add_building(root_mesh, b, coarse=True)
    data, lo, hi = root_mesh.glb(frame, copyright)
    (out_dir / "root.glb").write_bytes(data)
    children = []
    mx, my = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    cells = [(bounds[0], bounds[1], mx, my), (mx, bounds[1], bounds[2], my), (bounds[0], my, mx, bounds[3])]
    cells.append((mx, my, bounds[2], bounds[3]))
    for i, cell in enumerate(cells):
        mesh = _Mesh()
        _add_ground(mesh, cell)
        cb = box(*cell)
        for b in bld:
            c = b.footprint.centroid
            if cb.contains(c) or (cb.touches(c) and c.x < cell[2] and c.y < cell[3]):
                _add_building(mesh, b, coarse=False)
        data, clo, chi = mesh.glb(frame, copyright)
        (out_dir / f"detail_{i}.glb").write_bytes(data)
        children.append(
            {
                "boundingVolume": {"box": _box(clo, chi)},
                "geometricError": 0.0,
                "content": {"uri": f"detail_{i}.glb"},
            }
        )
        lo, hi = np.minimum(lo, clo), np.maximum(hi, chi)
    tileset = {
        "asset": {"version": "1.1", "copyright": "isonyc test fixture"},
        "geometricError": 200.0,
        "root": {
            "transform": frame.transform(),
            "boundingVolume": {"box": _box(lo, hi)},
            "geometricError": 40.0,
            "refine": "REPLACE",
            "content": {"uri": "root.glb"},
            "children": children,
        },
    }
    path = out_dir / "tileset.json"
    path.write_text(json.dumps(tileset))
    return path


class TileServer:
    """Serves a directory on 127.0.0.1 with faults: paths in ``missing`` answer 404, paths in ``stall`` sleep
    that many seconds first, ``on_request(path)`` runs before each answer. ``requests`` counts paths served."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing: set[str] = set()
        self.stall: dict[str, float] = {}
        self.on_request: Callable[[str], None] | None = None
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 — http.server's name
                path = self.path.split("?", 1)[0].lstrip("/")
                server.requests[path] += 1
                if server.on_request is not None:
                    server.on_request(path)
                if path in server.stall:
                    time.sleep(server.stall[path])
                f = server.root / path
                if path in server.missing or not f.is_file():
                    self.send_response(404)
                    self.end_headers()
                    return
                body = f.read_bytes()
                self.send_response(200)
                ctype = "application/json" if f.suffix == ".json" else "model/gltf-binary"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/tileset.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
