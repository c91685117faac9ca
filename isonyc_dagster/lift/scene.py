"""The Gaussian scene: splats seeded from frames (one per pixel or 2×2 block), trained on supervised pixels."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from isonyc_dagster.lift import raster
from isonyc_dagster.lift.camera import OrthoCamera
from isonyc_dagster.lift.frames import Frame

#: Initial splat: isotropic, σ = this × the pixel (block) size; opacity ``INIT_OPACITY``. With the rasterizer's
#: 0.3 px² low-pass this renders a 256 px Battery view at 28.5 dB before any training (σ = 0.5, opacity 0.9:
#: 25.8 dB); smaller splats would leave gaps in turned views.
INIT_SIGMA_PX = 0.3
INIT_OPACITY = 0.99
#: Pixels drawn per training iteration by the PyTorch rasterizer on CPU (random supervised tiles).
CPU_PIXELS_PER_ITER = 16384
#: Adam learning rates: positions in pixel sizes per step, the rest as in 3DGS (colour a little faster: we train
#: hundreds, not thousands, of iterations).
LR = {"means_px": 0.02, "log_scales": 0.005, "quats": 0.001, "opacity": 0.05, "f_dc": 0.01}


#: Intra-op threads while the lift runs on CPU. Its tensors are small (thousands of pixels × tens of splats per
#: op), and on a shared 2-core machine 2 threads made a training step 12× slower than 1 (0.51 s vs 0.04 s).
CPU_THREADS = 1


@contextmanager
def cpu_threads(device: torch.device, n: int = CPU_THREADS) -> Iterator[None]:
    """Limit torch's intra-op threads to ``n`` on CPU for the duration (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    """ "auto" → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres (expected depth; 0 where nothing is drawn)
    alpha: np.ndarray  # (H, W) float32


class GaussianScene:
    """Splat parameters (means m, log scales, quaternions w-x-y-z, opacity logits, SH DC colour) and frames."""

    def __init__(self, device: torch.device, *, seed: int = 0, use_gsplat: bool | None = None) -> None:
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.use_gsplat = raster.gsplat_available(device) if use_gsplat is None else use_gsplat
        z = torch.zeros
        self.means = z((0, 3), device=device)
        self.log_scales = z((0, 3), device=device)
        self.quats = z((0, 4), device=device)
        self.opacity_logits = z((0,), device=device)
        self.f_dc = z((0, 3), device=device)
        self.frames: list[Frame] = []
        #: Splats added with each frame (the original's "gaussian frames").
        self.gaussian_frames: list[int] = []
        self.background = torch.zeros(3, device=device)

    @property
    def rasterizer(self) -> str:
        if self.use_gsplat:
            return "gsplat"
        return "torch" if self.device.type == "cuda" else "torch-cpu"

    @property
    def count(self) -> int:
        return int(self.means.shape[0])

    # --- building ---------------------------------------------------------------------------------------
    def add_frame(self, frame: Frame, stride: int = 1) -> int:
        """Append ``frame`` and seed a splat at each of its ``seed_mask`` pixels (or fully masked 2×2 blocks):
        position from the exact inverse camera, colour from the image. Returns the number of splats added."""
        self.frames.append(frame)
        cam = frame.camera
        mask = frame.seed_mask()
        rgb = frame.rgb.astype(np.float32) / 255.0
        if stride > 1:
            h, w = mask.shape[0] // stride, mask.shape[1] // stride
            mask = np.asarray(mask[: h * stride, : w * stride].reshape(h, stride, w, stride).all(axis=(1, 3)))
            rgb = rgb[: h * stride, : w * stride].reshape(h, stride, w, stride, 3).mean(axis=(1, 3))
        pts = cam.unproject_image(frame.depth, stride)[mask]
        cols = rgb[mask]
        n = len(pts)
        sigma = INIT_SIGMA_PX * stride * cam.metres_per_pixel
        dev = self.device
        self.means = torch.cat([self.means, torch.as_tensor(pts, dtype=torch.float32, device=dev)])
        self.log_scales = torch.cat([self.log_scales, torch.full((n, 3), math.log(sigma), device=dev)])
        q = torch.zeros((n, 4), device=dev)
        q[:, 0] = 1.0
        self.quats = torch.cat([self.quats, q])
        logit = math.log(INIT_OPACITY / (1 - INIT_OPACITY))
        self.opacity_logits = torch.cat([self.opacity_logits, torch.full((n,), logit, device=dev)])
        fdc = (torch.as_tensor(cols, dtype=torch.float32, device=dev) - 0.5) / raster.C0
        self.f_dc = torch.cat([self.f_dc, fdc])
        self.gaussian_frames.append(n)
        return n

    # --- rendering --------------------------------------------------------------------------------------
    def _colors(self, f_dc: torch.Tensor) -> torch.Tensor:
        return (0.5 + raster.C0 * f_dc).clamp(0.0, 1.0)

    def _render(
        self, params: tuple[torch.Tensor, ...], cam: OrthoCamera, tiles: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rgb (H, W, 3), depth (H, W), alpha (H, W)) as tensors, differentiable in ``params``."""
        means, log_scales, quats, opacity_logits, f_dc = params
        scales, opac = torch.exp(log_scales), torch.sigmoid(opacity_logits)
        p = raster.project(means, scales, quats, cam)
        feats = torch.cat([self._colors(f_dc), p.depths[:, None]], dim=1)
        if self.use_gsplat and tiles is None:
            img, alpha = raster.render_gsplat(means, scales, quats, feats, opac, cam)
        else:
            img, alpha = raster.rasterize(p, feats, opac, cam.width, cam.height, tiles=tiles)
        rgb = img[..., :3] + (1.0 - alpha)[..., None] * self.background
        depth = img[..., 3] / alpha.clamp_min(1e-6)
        return rgb, depth, alpha

    def params(self) -> tuple[torch.Tensor, ...]:
        return (self.means, self.log_scales, self.quats, self.opacity_logits, self.f_dc)

    @torch.no_grad()
    def render(self, cam: OrthoCamera) -> Rendered:
        """The scene from ``cam`` (no gradients), as numpy arrays."""
        with cpu_threads(self.device):
            rgb, depth, alpha = self._render(self.params(), cam)
        a = alpha.cpu().numpy().astype(np.float32)
        d = np.where(a > 1e-3, depth.cpu().numpy(), 0.0).astype(np.float32)
        return Rendered((rgb.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8), d, a)

    # --- training ---------------------------------------------------------------------------------------
    def _targets(self) -> list[tuple[Frame, torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for f in self.frames:
            rgb = torch.as_tensor(f.rgb, device=self.device).float() / 255.0
            mask = torch.as_tensor(f.inpaint, device=self.device)
            ntx = -(-f.camera.width // raster.TILE)
            nty = -(-f.camera.height // raster.TILE)
            m = np.zeros((nty * raster.TILE, ntx * raster.TILE), bool)
            m[: f.inpaint.shape[0], : f.inpaint.shape[1]] = f.inpaint
            tiles = m.reshape(nty, raster.TILE, ntx, raster.TILE).any(axis=(1, 3)).reshape(-1)
            out.append((f, rgb, mask, torch.as_tensor(np.flatnonzero(tiles), device=self.device)))
        return out

    def train(
        self, iters: int, *, log: Callable[[str], None] | None = None, label: str = "train"
    ) -> list[float]:
        """``iters`` Adam steps of L1 loss on the frames' supervised pixels (a random frame each step; on CPU a
        random batch of its supervised tiles). Returns the loss per step."""
        if iters <= 0 or self.count == 0 or not self.frames:
            return []
        with cpu_threads(self.device):
            return self._train(iters, log, label)

    def _train(self, iters: int, log: Callable[[str], None] | None, label: str) -> list[float]:
        params = [t.detach().clone().requires_grad_(True) for t in self.params()]
        mpp = self.frames[0].camera.metres_per_pixel
        opt = torch.optim.Adam(
            [
                {"params": [params[0]], "lr": LR["means_px"] * mpp},
                {"params": [params[1]], "lr": LR["log_scales"]},
                {"params": [params[2]], "lr": LR["quats"]},
                {"params": [params[3]], "lr": LR["opacity"]},
                {"params": [params[4]], "lr": LR["f_dc"]},
            ],
            eps=1e-15,
        )
        targets = self._targets()
        full = self.device.type == "cuda"
        losses = []
        for it in range(iters):
            f, rgb_t, mask, sup_tiles = targets[int(self.rng.integers(len(targets)))]
            tiles = None
            n_tiles = CPU_PIXELS_PER_ITER // (raster.TILE * raster.TILE)
            if not full and len(sup_tiles) > n_tiles:
                pick = torch.as_tensor(self.rng.choice(len(sup_tiles), n_tiles, replace=False))
                tiles = sup_tiles[pick]
            rgb, _, _ = self._render(tuple(params), f.camera, tiles)
            m = mask
            if tiles is not None:
                m = mask & _tile_mask(tiles, f.camera.width, f.camera.height, self.device)
            if not bool(m.any()):
                continue
            loss = (rgb - rgb_t).abs()[m].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if log is not None and (it + 1) % max(1, iters // 4) == 0:
                log(f"[{label}] iter {it + 1}/{iters} L1={losses[-1]:.4f} splats={self.count}")
        with torch.no_grad():
            (self.means, self.log_scales, self.quats, self.opacity_logits, self.f_dc) = (
                p.detach() for p in params
            )
        return losses

    # --- export -----------------------------------------------------------------------------------------
    def export_arrays(self) -> dict[str, np.ndarray]:
        """The splats as 3DGS stores them: means, f_dc, opacity logits, log scales, unit quaternions (w-x-y-z)."""
        q = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return {
            "means": self.means.cpu().numpy(),
            "f_dc": self.f_dc.cpu().numpy(),
            "opacity": self.opacity_logits.cpu().numpy(),
            "log_scales": self.log_scales.cpu().numpy(),
            "quats": q.cpu().numpy(),
            "rgb": self._colors(self.f_dc).cpu().numpy(),
        }


def _tile_mask(tiles: torch.Tensor, width: int, height: int, device: torch.device) -> torch.Tensor:
    """(H, W) bool: the pixels of ``tiles``."""
    ntx = -(-width // raster.TILE)
    nty = -(-height // raster.TILE)
    m = torch.zeros(ntx * nty, dtype=torch.bool, device=device)
    m[tiles] = True
    m = m.reshape(nty, 1, ntx, 1).expand(nty, raster.TILE, ntx, raster.TILE).reshape(nty * raster.TILE, -1)
    return m[:height, :width]
