"""Lift outputs: the standard 3DGS ``.ply``, the fly-through MP4 (PyAV) and the Rerun recording."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from isonyc_dagster.fileio import atomic_output, atomic_write
from isonyc_dagster.images import png_bytes
from isonyc_dagster.lift.camera import OrthoCamera
from isonyc_dagster.lift.frames import Frame

#: The vertex fields of a 3DGS splat file, in the order viewers (SuperSplat, Spark, gsplat's exporter) expect.
PLY_FIELDS = (
    "x",
    "y",
    "z",
    "nx",
    "ny",
    "nz",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)
VIDEO_FPS = 25


def ply_path_for(path: str | Path) -> Path:
    """``path`` itself when it names a .ply, else ``path/gf.ply`` (a directory gets ``gf.ply`` inside)."""
    p = Path(path)
    return p if p.suffix.lower() == ".ply" else p / "gf.ply"


def write_ply(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write splats (``GaussianScene.export_arrays``) as a binary little-endian 3DGS ``.ply``: positions, zero
    normals, SH DC colours, opacity (logit), scales (log), rotation (unit quaternion w-x-y-z)."""
    from plyfile import PlyData, PlyElement

    n = len(arrays["means"])
    vert = np.zeros(n, dtype=[(f, "<f4") for f in PLY_FIELDS])
    cols = np.concatenate(
        [
            arrays["means"],
            np.zeros((n, 3), np.float32),
            arrays["f_dc"],
            arrays["opacity"][:, None],
            arrays["log_scales"],
            arrays["quats"],
        ],
        axis=1,
    ).astype(np.float32)
    for i, f in enumerate(PLY_FIELDS):
        vert[f] = cols[:, i]
    out = ply_path_for(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        PlyData([PlyElement.describe(vert, "vertex")], text=False).write(str(tmp))
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """A lossless PNG of an (H, W, 3) uint8 image, written atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, png_bytes(rgb))
    return out


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = VIDEO_FPS) -> Path:
    """Encode RGB frames (H, W, 3 uint8, even sizes) as H.264 MP4 (yuv420p) with PyAV."""
    import av

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with atomic_output(out) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for f in frames:
            img = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(f[: h - h % 2, : w - w % 2]), format="rgb24"
            )
            for packet in stream.encode(img):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def count_video_frames(path: str | Path) -> int:
    """Decode an MP4 fully and count its frames (the check that it plays)."""
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


class RerunLog:
    """The lift's Rerun recording (saved to an ``.rrd``): frames with their masks and camera frusta, the evolving
    point cloud, the final trajectory, and a blueprint with tabs Initialization / Coarse Scene / Final Scene.

    Rerun cameras are pinholes; an orthographic frame is shown as a pinhole placed in front of its scene with the
    focal length that gives the same scale there (a telephoto stand-in for the same image plane).
    """

    TABS = ("Initialization", "Coarse Scene", "Final Scene")

    def __init__(self, path: Path, orientation: Literal["landscape", "portrait"]) -> None:
        import rerun as rr

        self.rr = rr
        self.path = path
        self.orientation = orientation
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rec = rr.RecordingStream("isonyc_lift")
        self.rec.save(str(path))
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        self.cameras: list[str] = []

    def _pinhole(self, path: str, cam: OrthoCamera, target_depth: float) -> None:
        rr = self.rr
        # A pinhole ``d`` in front of the point seen at the image centre, with the focal length that gives the
        # ortho camera's scale at that point: its frustum ends on the scene.
        d = max(cam.width, cam.height) / cam.scale
        origin = cam.image_center_point(target_depth) - d * cam.R[2]
        self.rec.log(path, rr.Transform3D(translation=origin, mat3x3=cam.R.T))
        self.rec.log(
            f"{path}/pinhole",
            rr.Pinhole(
                focal_length=cam.scale * d,
                principal_point=[cam.cx, cam.cy],
                width=cam.width,
                height=cam.height,
                camera_xyz=rr.ViewCoordinates.RDF,
                image_plane_distance=d * 0.5,
            ),
        )

    def log_frame(self, frame: Frame, *, stage: str, points: bool = False) -> None:
        """One frame: RGB, depth, confidence and inpaint masks under its pinhole; optionally its point cloud."""
        rr = self.rr
        name = f"camera_{len(self.cameras)}_{frame.name}"
        self.cameras.append(name)
        path = f"world/{name}"
        self.rec.set_time("stage", sequence=self.TABS.index(stage) if stage in self.TABS else 0)
        self._pinhole(path, frame.camera, float(np.median(frame.depth)))
        pin = f"{path}/pinhole"
        self.rec.log(f"{pin}/rgb", rr.Image(frame.rgb, color_model=rr.ColorModel.RGB).compress())
        self.rec.log(f"{pin}/depth", rr.DepthImage(frame.depth, meter=1.0))
        self.rec.log(
            f"{pin}/dpt_conf_mask", rr.Image(frame.conf.astype(np.uint8) * 255, color_model=rr.ColorModel.L)
        )
        self.rec.log(
            f"{pin}/inpaint_mask", rr.Image(frame.inpaint.astype(np.uint8) * 255, color_model=rr.ColorModel.L)
        )
        self.rec.log(
            f"{pin}/inpaint_wo_edges_mask",
            rr.Image(frame.inpaint_wo_edge.astype(np.uint8) * 255, color_model=rr.ColorModel.L),
        )
        if points:
            m = frame.seed_mask()
            pts = frame.camera.unproject_image(frame.depth)[m]
            self.rec.log(f"world/{name}_point_cloud", rr.Points3D(pts, colors=frame.rgb[m]))

    def log_splats(self, arrays: dict[str, np.ndarray], *, step: int, entity: str = "world/splats") -> None:
        """All splats as one ``Points3D`` (colour from SH DC, radius from the largest scale)."""
        rr = self.rr
        self.rec.set_time("stage", sequence=step)
        radii = np.exp(arrays["log_scales"]).max(axis=1)
        cols = (np.clip(arrays["rgb"], 0, 1) * 255).astype(np.uint8)
        self.rec.log(entity, rr.Points3D(arrays["means"], colors=cols, radii=radii))

    def log_render(self, i: int, cam: OrthoCamera, rgb: np.ndarray, depth: np.ndarray) -> None:
        """One fly-through frame: RGB + depth under its camera (timeline ``frame``)."""
        rr = self.rr
        self.rec.set_time("frame", sequence=i)
        valid = depth[depth > 0]
        self._pinhole("world/render_camera", cam, float(np.median(valid)) if valid.size else 0.0)
        self.rec.log(
            "world/render_camera/pinhole/rgb", rr.Image(rgb, color_model=rr.ColorModel.RGB).compress()
        )
        self.rec.log("world/render_camera/pinhole/depth", rr.DepthImage(depth, meter=1.0))

    def blueprint(self, active_tab: int) -> Any:
        """Tabs Initialization / Coarse Scene / Final Scene: a 3-D view (frusta and point clouds only) beside the
        2-D panels of each camera (RGB / depth / confidence / inpaint); side by side for landscape input,
        stacked for portrait."""
        rrb = self.rr.blueprint
        exclude = (
            "- /**/rgb\n- /**/depth\n- /**/dpt_conf_mask\n- /**/inpaint_mask\n- /**/inpaint_wo_edges_mask"
        )
        tabs = []
        for t, title in enumerate(self.TABS):
            cams = self.cameras if t < 2 else ["render_camera"]
            panels = [
                rrb.Vertical(
                    *[
                        rrb.Spatial2DView(origin=f"world/{c}/pinhole/{layer}", name=f"{c} {layer}")
                        for layer in ("rgb", "depth", "dpt_conf_mask", "inpaint_mask")
                        if t == 2 and layer in ("rgb", "depth") or t < 2
                    ],
                    name=c,
                )
                for c in cams
            ]
            view3d = rrb.Spatial3DView(origin="world", contents=["+ world/**", exclude], name="3D")
            grid = rrb.Tabs(*panels, name="cameras") if panels else rrb.TextLogView(name="log")
            body = (
                rrb.Horizontal(view3d, grid)
                if self.orientation == "landscape"
                else rrb.Vertical(view3d, grid)
            )
            tabs.append(rrb.Vertical(body, name=title))
        return rrb.Blueprint(rrb.Tabs(*tabs, active_tab=active_tab), collapse_panels=True)

    def send_blueprint(self, active_tab: int) -> None:
        self.rec.send_blueprint(self.blueprint(active_tab))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()


def rrd_entities(path: str | Path) -> set[str]:
    """Entity paths logged in an ``.rrd`` (read back with the Rerun SDK)."""
    import rerun.chunk as rrc

    store = rrc.RrdReader(str(path)).store()
    return {str(p) for p in store.schema().entity_paths()}


def rrd_blueprint_names(path: str | Path) -> set[str]:
    """Display names of the containers and views in the last blueprint of an ``.rrd`` (tabs, panels)."""
    import rerun.chunk as rrc

    reader = rrc.RrdReader(str(path))
    stores = reader.blueprints()
    if not stores:
        return set()
    names: set[str] = set()
    for chunk in reader.store(store=stores[-1]).stream().to_chunks():
        batch = chunk.to_record_batch()
        for col in batch.schema.names:
            if col.endswith("display_name"):
                for v in batch.column(col).to_pylist():
                    names.update(v if isinstance(v, list) else [v] if v else [])
    return names
