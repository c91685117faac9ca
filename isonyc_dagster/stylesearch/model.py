"""Phase 2: the inverse model (image → style parameters), a ResNet-18 with one head per kind of knob.

torch is imported inside the functions, never at module import, so the core CLI works without the ``ml`` extra
(``isonyc style train`` then says to install it). The backbone is ResNet-18 (BasicBlock × [2, 2, 2, 2], He et
al. 2016) built from ``torch.nn`` and randomly initialised: timm needs torchvision, and PyPI's torchvision does not
import beside the CPU torch 2.13 this project pins; nothing is downloaded. ``width`` scales the channels (64 =
the standard ResNet-18; tests use 8). Heads: continuous (sigmoid → [0, 1], MSE), one linear head per categorical
(cross-entropy) and one for the booleans (BCE with logits).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster.backends.pixelart.params import StyleParams
from isonyc_dagster.fileio import atomic_output
from isonyc_dagster.stylesearch.space import SPACE, Encoded, StyleSearchError, reconstruct_params

__all__ = ["InverseModel", "require_torch", "train_inverse"]


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise StyleSearchError(
            "the inverse model needs torch: install the ml extra (`pip install -e '.[ml]'`, CPU torch is enough)"
        ) from None
    return torch


def _space_signature() -> dict[str, Any]:
    return {"cont": SPACE.cont, "cats": {n: SPACE.choices[n] for n in SPACE.cats}, "bools": SPACE.bools}


def _build(width: int) -> Any:
    torch = require_torch()
    nn = torch.nn

    class Block(nn.Module):  # type: ignore[name-defined]
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))

    class InverseNet(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.stem = nn.Sequential(
                nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
            layers: list[Any] = []
            cin = w
            for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
                layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.cont = nn.Linear(cin, len(SPACE.cont))
            self.cats = nn.ModuleList([nn.Linear(cin, k) for k in SPACE.cat_sizes])
            self.bools = nn.Linear(cin, len(SPACE.bools))

        def forward(self, x: Any) -> tuple[Any, list[Any], Any]:
            f = self.body(self.stem(x)).mean(dim=(2, 3))
            return torch.sigmoid(self.cont(f)), [h(f) for h in self.cats], self.bools(f)

    return InverseNet()


def _to_tensor(images: np.ndarray, input_size: int) -> Any:
    """(N, S, S, 3) uint8 → (N, 3, s, s) float in [-1, 1], area-downsampled by the integer factor S / s."""
    torch = require_torch()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    f = images.shape[1] // input_size
    if f > 1:
        x = torch.nn.functional.avg_pool2d(x, f)
    return x / 127.5 - 1.0


def train_inverse(
    images: np.ndarray,
    targets: list[Encoded],
    out_path: str | Path,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 32,
    input_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    threads: int | None = 2,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on (images, targets), save to ``out_path``; returns the per-epoch history and final validation."""
    torch = require_torch()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    n = len(images)
    side = int(images.shape[1])
    input_size = input_size or side
    if side % input_size:
        raise StyleSearchError(f"input_size {input_size} must divide the image size {side}")
    if n < 10:
        raise StyleSearchError(
            f"{n} pairs are too few to train on; generate at least 10 (`isonyc style data --n`)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    val, tr = order[:n_val], order[n_val:]
    cont = torch.tensor(np.stack([t.cont for t in targets]))
    cats = torch.tensor(np.stack([t.cats for t in targets]))
    bools = torch.tensor(np.stack([t.bools for t in targets]))
    net = _build(width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * int(np.ceil(len(tr) / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    ce = torch.nn.CrossEntropyLoss()
    bce = torch.nn.BCEWithLogitsLoss()

    def loss_of(idx: np.ndarray) -> tuple[Any, Any, list[Any], Any]:
        x = _to_tensor(images[idx], input_size).to(device)
        pc, pk, pb = net(x)
        ti = torch.from_numpy(idx)
        loss = torch.nn.functional.mse_loss(pc, cont[ti].to(device)) * 4.0
        for j, logits in enumerate(pk):
            loss = loss + ce(logits, cats[ti, j].to(device)) / len(pk)
        loss = loss + bce(pb, bools[ti].to(device))
        return loss, pc, pk, pb

    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = rng.permutation(tr)
        total, count = 0.0, 0
        for s in range(0, len(perm), batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss, *_ = loss_of(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        ev = _evaluate(net, images, val, cont, cats, bools, device, loss_of)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            **ev,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if progress:
            progress(
                f"  epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f}, val loss {ev['val_loss']:.4f}, "
                f"categorical acc {ev['cat_acc']:.1%}, boolean acc {ev['bool_acc']:.1%}, "
                f"continuous MAE {ev['cont_mae']:.3f} ({row['seconds']:.0f} s)"
            )
    meta = {
        "width": width,
        "size": side,
        "input_size": input_size,
        "space": _space_signature(),
        "history": history,
    }
    net = net.to("cpu")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp)
    return meta


def _evaluate(
    net: Any,
    images: np.ndarray,
    val: np.ndarray,
    cont: Any,
    cats: Any,
    bools: Any,
    device: str,
    loss_of: Callable[[np.ndarray], Any],
) -> dict[str, float]:
    torch = require_torch()
    net.eval()
    with torch.no_grad():
        losses, acc, bacc, mae = [], [], [], []
        for s in range(0, len(val), 64):
            idx = val[s : s + 64]
            loss, pc, pk, pb = loss_of(idx)
            ti = torch.from_numpy(idx)
            losses.append(float(loss) * len(idx))
            mae.append(float((pc.cpu() - cont[ti]).abs().mean()) * len(idx))
            acc.append(
                np.mean(
                    [float((lg.argmax(1).cpu() == cats[ti, j]).float().mean()) for j, lg in enumerate(pk)]
                )
                * len(idx)
            )
            bacc.append(float(((pb.cpu() > 0).float() == bools[ti]).float().mean()) * len(idx))
    n = len(val)
    return {
        "val_loss": sum(losses) / n,
        "cat_acc": float(sum(acc)) / n,
        "bool_acc": sum(bacc) / n,
        "cont_mae": sum(mae) / n,
    }


class InverseModel:
    """A trained inverse model: ``predict`` turns images into valid ``StyleParams``."""

    def __init__(self, net: Any, meta: dict[str, Any]) -> None:
        self.net = net
        self.meta = meta
        self.size = int(meta["size"])
        self.input_size = int(meta.get("input_size") or self.size)

    @classmethod
    def load(cls, path: str | Path) -> InverseModel:
        torch = require_torch()
        p = Path(path)
        if not p.exists():
            raise StyleSearchError(f"no inverse model at {p}; train one with `isonyc style train`")
        try:
            blob = torch.load(p, map_location="cpu", weights_only=False)
            meta = blob["meta"]
        except Exception as e:  # torch raises many types for a damaged file
            raise StyleSearchError(
                f"inverse model {p} is unreadable ({type(e).__name__}); train it again"
            ) from None
        if meta.get("space") != json.loads(json.dumps(_space_signature())):
            raise StyleSearchError(
                f"inverse model {p} was trained for another set of style parameters; train it again"
            )
        net = _build(int(meta["width"]))
        net.load_state_dict(blob["state_dict"])
        net.eval()
        return cls(net, meta)

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Model outputs for (N, S, S, 3) uint8 images: continuous, per-categorical logits, boolean logits."""
        torch = require_torch()
        if images.ndim == 3:
            images = images[None]
        if images.shape[1:3] != (self.size, self.size):
            raise StyleSearchError(
                f"images are {images.shape[2]}×{images.shape[1]}; this model takes {self.size}×{self.size}"
            )
        with torch.inference_mode():
            pc, pk, pb = self.net(_to_tensor(images, self.input_size))
        return pc.numpy(), [k.numpy() for k in pk], pb.numpy()

    def predict(self, images: np.ndarray, base: StyleParams | None = None) -> list[StyleParams]:
        pc, pk, pb = self.raw(images)
        return [reconstruct_params(pc[i], [k[i] for k in pk], pb[i], base=base) for i in range(len(pc))]
