"""Differentiable Gaussian-splat rasterizer for orthographic cameras: PyTorch (any device), or gsplat on CUDA.

The PyTorch rasterizer follows 3DGS: each Gaussian projects to a 2-D Gaussian (exactly, since the camera is
orthographic: ``Σ2D = s²·(R Σ Rᵀ)[:2, :2] + eps2d·I``), is assigned to every 16×16 tile its 3σ box touches, and
each tile composites its Gaussians front to back (sorted by depth): ``α = min(0.99, o·exp(−½ dᵀ Σ2D⁻¹ d))``,
dropped below 1/255; ``C = Σ cᵢ αᵢ Πⱼ<ᵢ (1 − αⱼ) + T·bg``. Tiles are processed as padded batches
(tiles × pixels × Gaussians), so everything is vectorised and autograd gives exact gradients for colour,
opacity, position, scale and rotation. ``tiles`` renders only a subset (stochastic training on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from isonyc_dagster.lift.camera import OrthoCamera

TILE = 4
#: Low-pass added to every projected covariance (pixels²), as in 3DGS and gsplat's default.
EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
#: SH band-0 constant: colour = 0.5 + C0 · f_dc.
C0 = 0.28209479177387814
#: Elements (tiles × pixels × Gaussians) per batch: bounds the rasterizer's memory.
_BATCH_ELEMS = 6_000_000


@dataclass
class Projected:
    """Gaussians in a camera's image: centres (N, 2) px, conics (N, 3) = (a, b, c) of Σ2D⁻¹, depth (N,) m,
    3σ radius (N,) px."""

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit-normalised quaternions (N, 4) as (w, x, y, z) → rotation matrices (N, 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def camera_tensors(cam: OrthoCamera, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    R = torch.as_tensor(cam.R, dtype=dtype, device=device)
    t = torch.as_tensor(cam.t, dtype=dtype, device=device)
    c = torch.tensor([cam.cx, cam.cy], dtype=dtype, device=device)
    return R, t, c


def project(
    means: torch.Tensor,
    scales: torch.Tensor,
    quats: torch.Tensor,
    cam: OrthoCamera,
    eps2d: float = EPS2D,
) -> Projected:
    """Project 3-D Gaussians (means (N, 3) m, scales (N, 3) m, quats (N, 4)) into ``cam`` (exact: orthographic)."""
    R, t, c = camera_tensors(cam, means.device, means.dtype)
    pc = means @ R.T + t
    means2d = pc[:, :2] * cam.scale + c
    M = quat_to_rotmat(quats) * scales[:, None, :]  # columns: the Gaussian's axes scaled
    A = (R[:2] @ M) * cam.scale  # (N, 2, 3): the image-plane part, in pixels
    cov = A @ A.transpose(1, 2)
    a = cov[:, 0, 0] + eps2d
    b = cov[:, 0, 1]
    cc = cov[:, 1, 1] + eps2d
    det = (a * cc - b * b).clamp_min(1e-12)
    conics = torch.stack([cc / det, -b / det, a / det], dim=-1)
    mid = 0.5 * (a + cc)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.0))
    radii = 3.0 * torch.sqrt(lam)
    return Projected(means2d, conics, pc[:, 2], radii)


def _tile_pairs(
    p: Projected, width: int, height: int, tiles: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tile slot, Gaussian id) pairs sorted by slot then depth, the padded width K, and the slot count."""
    ntx, nty = -(-width // TILE), -(-height // TILE)
    dev = p.means2d.device
    with torch.no_grad():
        m, r = p.means2d, p.radii
        tx0 = torch.floor((m[:, 0] - r) / TILE).long().clamp(0, ntx - 1)
        tx1 = torch.floor((m[:, 0] + r) / TILE).long().clamp(0, ntx - 1)
        ty0 = torch.floor((m[:, 1] - r) / TILE).long().clamp(0, nty - 1)
        ty1 = torch.floor((m[:, 1] + r) / TILE).long().clamp(0, nty - 1)
        on = (
            (m[:, 0] + r >= 0)
            & (m[:, 0] - r < width)
            & (m[:, 1] + r >= 0)
            & (m[:, 1] - r < height)
            & (p.depths > 0)
        )
        gids = torch.nonzero(on).squeeze(1)
        wx = tx1[gids] - tx0[gids] + 1
        counts = wx * (ty1[gids] - ty0[gids] + 1)
        total = int(counts.sum())
        gid = torch.repeat_interleave(gids, counts)
        start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        k = torch.arange(total, device=dev) - start
        wxr = torch.repeat_interleave(wx, counts)
        tile = (ty0[gid] + k // wxr) * ntx + tx0[gid] + k % wxr
        n_slots = ntx * nty
        if tiles is not None:
            slot_of = torch.full((n_slots,), -1, dtype=torch.long, device=dev)
            slot_of[tiles] = torch.arange(len(tiles), device=dev)
            tile = slot_of[tile]
            keep = tile >= 0
            tile, gid = tile[keep], gid[keep]
            n_slots = len(tiles)
        rank = torch.empty_like(p.depths, dtype=torch.long)
        rank[torch.argsort(p.depths, stable=True)] = torch.arange(len(p.depths), device=dev)
        order = torch.argsort(tile * (len(p.depths) + 1) + rank[gid])
        tile, gid = tile[order], gid[order]
        per = torch.bincount(tile, minlength=n_slots)
        kmax = int(per.max()) if len(per) else 0
        pos = torch.arange(len(tile), device=dev) - torch.repeat_interleave(torch.cumsum(per, 0) - per, per)
        idx = torch.full((n_slots, max(kmax, 1)), -1, dtype=torch.long, device=dev)
        idx[tile, pos] = gid
    return idx, per, n_slots


def rasterize(
    p: Projected,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    width: int,
    height: int,
    *,
    background: torch.Tensor | None = None,
    tiles: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite projected Gaussians: colours (N, C), opacities (N,) in [0, 1] → image (H, W, C), alpha (H, W).

    With ``tiles`` (tile ids ``ty·ntx + tx``), only those tiles are drawn; the rest stays zero.
    """
    dev, dt = colors.device, colors.dtype
    nch = colors.shape[1]
    ntx = -(-width // TILE)
    idx, _, n_slots = _tile_pairs(p, width, height, tiles)
    tile_ids = tiles if tiles is not None else torch.arange(n_slots, device=dev)
    ly, lx = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    lx, ly = lx.reshape(-1).to(dt) + 0.5, ly.reshape(-1).to(dt) + 0.5
    kmax = idx.shape[1]
    batch = max(1, _BATCH_ELEMS // (TILE * TILE * kmax))
    outs, alphas = [], []
    for s in range(0, n_slots, batch):
        ids = idx[s : s + batch]
        tid = tile_ids[s : s + batch]
        px = (tid % ntx).to(dt)[:, None] * TILE + lx  # (B, P)
        py = (tid // ntx).to(dt)[:, None] * TILE + ly
        valid = ids >= 0
        g = ids.clamp_min(0)
        mu = p.means2d[g]  # (B, K, 2)
        con = p.conics[g]
        dx = px[:, :, None] - mu[:, None, :, 0]  # (B, P, K)
        dy = py[:, :, None] - mu[:, None, :, 1]
        power = (
            -0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy)
            - con[:, None, :, 1] * dx * dy
        )
        op = (opacities[g] * valid)[:, None, :]
        alpha = (op * torch.exp(power)).clamp(max=ALPHA_MAX)
        alpha = torch.where((power > 0) | (alpha < ALPHA_MIN), torch.zeros_like(alpha), alpha)
        trans = torch.cumprod(1.0 - alpha, dim=-1)
        excl = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
        w = alpha * excl
        outs.append(torch.einsum("bpk,bkc->bpc", w, colors[g]))
        alphas.append(w.sum(-1))
    out = torch.cat(outs) if outs else torch.zeros((0, TILE * TILE, nch), device=dev, dtype=dt)
    acc = torch.cat(alphas) if alphas else torch.zeros((0, TILE * TILE), device=dev, dtype=dt)
    if background is not None:
        out = out + (1.0 - acc)[..., None] * background
    return _untile(out, acc, tile_ids, width, height)


def _untile(
    out: torch.Tensor, acc: torch.Tensor, tile_ids: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile pixel batches → images cropped to (height, width)."""
    ntx, nty = -(-width // TILE), -(-height // TILE)
    nch = out.shape[-1]
    img = out.new_zeros((nty * ntx, TILE * TILE, nch))
    al = acc.new_zeros((nty * ntx, TILE * TILE))
    img = img.index_copy(0, tile_ids, out)
    al = al.index_copy(0, tile_ids, acc)
    img = img.reshape(nty, ntx, TILE, TILE, nch).permute(0, 2, 1, 3, 4).reshape(nty * TILE, ntx * TILE, nch)
    al = al.reshape(nty, ntx, TILE, TILE).permute(0, 2, 1, 3).reshape(nty * TILE, ntx * TILE)
    return img[:height, :width], al[:height, :width]


def rasterize_reference(
    p: Projected, colors: torch.Tensor, opacities: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force (every pixel against every Gaussian, no tiles): the rasterizer's test oracle. Tiny scenes only."""
    dev, dt = colors.device, colors.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    px, py = xs.reshape(-1).to(dt) + 0.5, ys.reshape(-1).to(dt) + 0.5
    order = torch.argsort(p.depths, stable=True)
    order = order[p.depths[order] > 0]
    mu, con = p.means2d[order], p.conics[order]
    dx = px[:, None] - mu[None, :, 0]
    dy = py[:, None] - mu[None, :, 1]
    power = -0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) - con[None, :, 1] * dx * dy
    # The tiled rasterizer shows a Gaussian only in the tiles its 3σ box touches: the same cut here.
    m, r = mu, p.radii[order]
    tx, ty = torch.floor(px / TILE)[:, None], torch.floor(py / TILE)[:, None]
    inside = (
        (tx >= torch.floor((m[:, 0] - r) / TILE)[None])
        & (tx <= torch.floor((m[:, 0] + r) / TILE)[None])
        & (ty >= torch.floor((m[:, 1] - r) / TILE)[None])
        & (ty <= torch.floor((m[:, 1] + r) / TILE)[None])
    )
    alpha = (opacities[order][None] * torch.exp(power)).clamp(max=ALPHA_MAX)
    alpha = torch.where((power > 0) | (alpha < ALPHA_MIN) | ~inside, torch.zeros_like(alpha), alpha)
    trans = torch.cumprod(1.0 - alpha, dim=-1)
    excl = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=-1)
    w = alpha * excl
    img = (w @ colors[order]).reshape(height, width, -1)
    return img, w.sum(-1).reshape(height, width)


def gsplat_available(device: torch.device) -> bool:
    """Whether gsplat's CUDA rasterizer can run here."""
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_gsplat(
    means: torch.Tensor,
    scales: torch.Tensor,
    quats: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    cam: OrthoCamera,
    background: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same image through gsplat (CUDA): orthographic camera model, same eps2d, colours as features."""
    import gsplat

    view = torch.as_tensor(cam.world_to_cam, dtype=means.dtype, device=means.device)[None]
    K = torch.as_tensor(cam.K, dtype=means.dtype, device=means.device)[None]
    img, alpha, _ = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        view,
        K,
        cam.width,
        cam.height,
        camera_model="ortho",
        eps2d=EPS2D,
        near_plane=1e-3,
        far_plane=1e10,
        backgrounds=None if background is None else background[None],
    )
    return img[0], alpha[0, ..., 0]


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of two uint8 or [0, 1] float images, over ``mask`` pixels when given."""
    a = np.asarray(pred, np.float64)
    b = np.asarray(target, np.float64)
    if a.max(initial=0) > 1.5 or b.max(initial=0) > 1.5:
        a, b = a / 255.0, b / 255.0
    err = (a - b) ** 2
    if err.ndim == 3:
        err = err.mean(-1)
    if mask is not None:
        err = err[np.asarray(mask, bool)]
    mse = float(err.mean()) if err.size else 0.0
    return float("inf") if mse <= 0 else float(-10.0 * np.log10(mse))
