"""The lift's cameras and rasterizer: exact orthographic projection, tiled compositing equal to a brute-force
reference (values and gradients), tile subsets, and (on CUDA with gsplat) agreement with gsplat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.lift import raster
from isonyc_dagster.lift.camera import look_at, map_camera, orbit
from isonyc_dagster.lift.frames import make_frame, resample_view, working_size
from isonyc_dagster.lift.scene import GaussianScene, cpu_threads

#: CPU vs gsplat (CUDA): largest allowed difference per pixel channel (colours in [0, 1]).
GPU_TOLERANCE = 2e-2


def _scene(n: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 3.0
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.6 + 0.15
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    cols = torch.rand(n, 3, generator=g, dtype=dtype)
    op = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.1
    return means, scales, quats, cols, op


CAMS = [
    look_at(np.zeros(3), -15.0, -45.0, 1 / 0.3, 40, 36),
    look_at(np.array([0.5, -0.3, 0.2]), 20.0, -60.0, 2.5, 33, 29),
]


def test_the_map_camera_is_the_geometry_modules_projection_and_its_exact_inverse(
    geometry: MapGeometry,
) -> None:
    cam = map_camera(geometry, (1000, -2000), 512, 256)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-900, 900, 200), rng.uniform(-900, 900, 200), rng.uniform(0, 400, 200)], 1)
    px, py = geometry.ground_to_pixel(pts[:, 0], pts[:, 1], pts[:, 2])
    uv, depth = cam.project(pts)
    assert np.abs(uv[:, 0] - (px - 1000)).max() < 1e-6 and np.abs(uv[:, 1] - (py + 2000)).max() < 1e-6
    assert np.abs(cam.unproject(uv, depth) - pts).max() < 1e-6
    # Depth grows along the view: a taller point at the same pixel is nearer the camera.
    assert np.allclose(
        cam.R[2],
        [
            np.sin(np.radians(-15)) * np.cos(np.radians(45)),
            np.cos(np.radians(-15)) * np.cos(np.radians(45)),
            -np.sin(np.radians(45)),
        ],
    )
    assert np.allclose(cam.cam_to_world @ cam.world_to_cam, np.eye(4))
    assert cam.K[0, 0] == pytest.approx(1 / geometry.mpp) and (cam.cx, cam.cy) == (256.0, 128.0)


def test_a_scaled_working_view_keeps_every_pixel_on_its_world_point() -> None:
    cam = map_camera(MapGeometry(MapConfig()), (0, 0), 1000, 600)
    rgb = np.zeros((600, 1000, 3), np.uint8)
    depth = np.full((600, 1000), 2000.0, np.float32)
    cam2, rgb2, depth2, (m2,) = resample_view(cam, rgb, depth, [np.ones((600, 1000), bool)], 512)
    assert (cam2.width, cam2.height) == rgb2.shape[1::-1] == (512, 288) == working_size(1000, 600, 512)[1:]
    assert cam2.width % 32 == 0 and cam2.height % 32 == 0 and m2.all()
    world = cam.unproject(np.array([[500.0, 300.0], [100.5, 50.5]]), np.array([2000.0, 1990.0]))
    uv2, _ = cam2.project(world)
    f = 512 / 1000
    # Crop: 307 scaled rows → 288, 9 off the top; one factor on both axes.
    assert np.allclose(uv2[0], [500 * f, 300 * f - 9]) and cam2.scale == pytest.approx(cam.scale * f)
    assert np.allclose(uv2[1] - uv2[0], (np.array([100.5, 50.5]) - [500, 300]) * f)


def test_the_orbit_starts_at_the_base_view_and_stays_within_its_amplitudes() -> None:
    base = look_at(np.zeros(3), -15.0, -45.0, 2.0, 64, 64)
    cams = orbit(base, np.zeros(3), 40, forward_ratio=0.3, backward_ratio=0.4, max_percentage=50.0)
    assert len(cams) == 40 and np.allclose(cams[0].R, base.R) and cams[0].scale == pytest.approx(2.0)
    yaws = np.array([c.azimuth_deg + 15.0 for c in cams])
    zooms = np.array([c.scale / 2.0 for c in cams])
    assert np.abs(yaws).max() == pytest.approx(30.0, abs=0.5)
    assert zooms.max() <= 1.3 + 1e-9 and zooms.min() >= 1 / 1.4 - 1e-9
    # Every camera looks at the target: it projects to the image centre.
    for c in cams:
        assert np.allclose(c.project(np.zeros((1, 3)))[0], [[32.0, 32.0]])


@pytest.mark.parametrize("cam", CAMS)
def test_the_tiled_rasterizer_equals_the_brute_force_reference(cam) -> None:
    means, scales, quats, cols, op = _scene(80, 1)
    p = raster.project(means, scales, quats, cam)
    img, alpha = raster.rasterize(p, cols, op, cam.width, cam.height)
    ref, ref_alpha = raster.rasterize_reference(p, cols, op, cam.width, cam.height)
    assert img.shape == (cam.height, cam.width, 3)
    assert (img - ref).abs().max() < 1e-10 and (alpha - ref_alpha).abs().max() < 1e-10
    assert 0.05 < float(alpha.mean()) < 0.95  # a real test: partly covered


def test_gradients_of_every_parameter_match_the_reference() -> None:
    cam = CAMS[0]
    params = [t.requires_grad_(True) for t in _scene(30, 2)]

    def grads(fn):
        for t in params:
            t.grad = None
        means, scales, quats, cols, op = params
        p = raster.project(means, scales, quats, cam)
        img, alpha = fn(p, cols, op, cam.width, cam.height)
        w = torch.linspace(0.1, 1.0, img.numel(), dtype=img.dtype).reshape(img.shape)
        ((img * w).sum() + alpha.sum()).backward()
        return [t.grad.clone() for t in params]

    tiled, ref = grads(raster.rasterize), grads(raster.rasterize_reference)
    for name, a, b in zip(("means", "scales", "quats", "colors", "opacity"), tiled, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-9), name
        assert a.abs().sum() > 0, name


def test_autograd_matches_finite_differences_on_a_tiny_scene() -> None:
    cam = look_at(np.zeros(3), -15.0, -45.0, 3.0, 12, 12)
    means, scales, quats, cols, op = _scene(4, 3)
    op = torch.full((4,), 0.6, dtype=torch.float64)

    def f(m, s, c):
        p = raster.project(m, s, quats, cam)
        return raster.rasterize(p, c, op, cam.width, cam.height)[0]

    with cpu_threads(torch.device("cpu")):
        assert torch.autograd.gradcheck(
            f, (means.requires_grad_(), scales.requires_grad_(), cols.requires_grad_()), eps=1e-6, atol=1e-4
        )


def test_a_tile_subset_renders_exactly_those_tiles() -> None:
    cam = CAMS[0]
    means, scales, quats, cols, op = _scene(80, 4)
    p = raster.project(means, scales, quats, cam)
    full, _ = raster.rasterize(p, cols, op, cam.width, cam.height)
    ntx = -(-cam.width // raster.TILE)
    tiles = torch.tensor([0, 3, ntx + 2, 2 * ntx + 5])
    part, _ = raster.rasterize(p, cols, op, cam.width, cam.height, tiles=tiles)
    for t in tiles.tolist():
        y, x = (t // ntx) * raster.TILE, (t % ntx) * raster.TILE
        sl = (slice(y, y + raster.TILE), slice(x, x + raster.TILE))
        assert torch.allclose(part[sl], full[sl])
    assert float(part.abs().sum()) < float(full.abs().sum())


def test_training_fits_a_frame_and_seeds_one_splat_per_pixel_or_block() -> None:
    cam = look_at(np.zeros(3), -15.0, -45.0, 1.0, 32, 32)
    rng = np.random.default_rng(0)
    rgb = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # pixel-art blocks
    depth = np.full((32, 32), 50.0, np.float32) + rng.random((32, 32)).astype(np.float32)
    frame = make_frame("input", cam, rgb, depth, np.ones((32, 32), bool))
    coarse = GaussianScene(torch.device("cpu"))
    assert coarse.add_frame(frame, stride=2) == 16 * 16
    scene = GaussianScene(torch.device("cpu"))
    assert scene.add_frame(frame) == 32 * 32
    before = raster.psnr(scene.render(cam).rgb, rgb)
    losses = scene.train(60)
    after = raster.psnr(scene.render(cam).rgb, rgb)
    assert losses[-1] < losses[0] and after > before and after >= 30.0


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    assert raster.psnr(a, a) == float("inf")
    assert raster.psnr(a, b) == pytest.approx(10 * np.log10(16.0))
    mask = np.zeros((4, 4), bool)
    mask[1:, 1:] = True
    assert raster.psnr(a, b, mask) == float("inf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (and gsplat) for the GPU rasterizer")
def test_cpu_and_gpu_rasterizers_agree() -> None:
    pytest.importorskip("gsplat")
    cam = look_at(np.zeros(3), -15.0, -45.0, 4.0, 64, 48)
    means, scales, quats, cols, op = (t.float() for t in _scene(300, 5))
    p = raster.project(means, scales, quats, cam)
    cpu, _ = raster.rasterize(p, cols, op, cam.width, cam.height)
    dev = torch.device("cuda")
    gpu, _ = raster.render_gsplat(*(t.to(dev) for t in (means, scales, quats, cols, op)), cam)
    assert (cpu - gpu.cpu()).abs().max() < GPU_TOLERANCE
