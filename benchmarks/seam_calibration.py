"""Calibrate seam_score on the real style references (../shared/reference/style, read in place).

Cuts each reference at random places. A *true* cut (both sides contiguous in one image) should score
low; broken seams (other content, brightness/tint shift, a few-pixel misalignment, blur) high. Prints
percentiles per group, the share on the wrong side of DEFAULT_THRESHOLD, and the scoring speed.

    .venv/bin/python benchmarks/seam_calibration.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD, seam_score

STYLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "style"
T = 256  # tile side used for the cuts
CUTS_PER_IMAGE = 60


def main() -> int:
    files = sorted(STYLE.glob("*.jpg"))
    if not files:
        print(f"no style references under {STYLE}")
        return 1
    rng = np.random.default_rng(0)
    groups: dict[str, list[float]] = {
        k: [] for k in ("true", "other", "bright+10", "bright+5", "tint", "shift4", "shift2", "blur2")
    }
    t0 = time.perf_counter()
    for f in files:
        img = np.array(Image.open(f).convert("RGB"))
        H, W = img.shape[:2]
        for _ in range(CUTS_PER_IMAGE):
            y = int(rng.integers(0, H - T - 4))
            x = int(rng.integers(T, W - T))
            a, b = img[y : y + T, x - T : x], img[y : y + T, x : x + T]

            def shifted(d: object, b: np.ndarray = b) -> np.ndarray:
                return np.clip(b.astype(int) + d, 0, 255).astype(np.uint8)

            y2, x2 = int(rng.integers(0, H - T)), int(rng.integers(0, W - T))
            groups["true"].append(seam_score(a, b, "lr"))
            # the same cut rotated: a above b
            groups["true"].append(seam_score(np.rot90(a, -1), np.rot90(b, -1), "tb"))
            groups["other"].append(seam_score(a, img[y2 : y2 + T, x2 : x2 + T], "lr"))
            groups["bright+10"].append(seam_score(a, shifted(10), "lr"))
            groups["bright+5"].append(seam_score(a, shifted(5), "lr"))
            groups["tint"].append(seam_score(a, shifted(np.array([12, -6, 0])), "lr"))
            groups["shift4"].append(seam_score(a, img[y + 4 : y + 4 + T, x : x + T], "lr"))
            groups["shift2"].append(seam_score(a, img[y + 2 : y + 2 + T, x : x + T], "lr"))
            blur = np.array(Image.fromarray(b).filter(ImageFilter.GaussianBlur(2)))
            groups["blur2"].append(seam_score(a, blur, "lr"))
    dt = time.perf_counter() - t0
    n = sum(len(v) for v in groups.values())
    print(
        f"threshold {DEFAULT_THRESHOLD}; {n} seams of {T} px scored in {dt:.2f} s ({dt / n * 1e3:.2f} ms each)"
    )
    true = np.array(groups["true"])
    broken = np.concatenate([np.array(v) for k, v in groups.items() if k != "true"])
    for thr in (4.0, 5.0, 6.0, 8.0, 10.0):
        print(
            f"  threshold {thr:4.1f}: false alarms {(true > thr).mean():6.1%}, broken seams caught "
            f"{(broken > thr).mean():6.1%}" + ("   <- DEFAULT_THRESHOLD" if thr == DEFAULT_THRESHOLD else "")
        )
    # What K-candidate selection needs: on the same cut, does the true continuation score lower?
    true_lr = np.array(groups["true"][0::2])
    for k, v in groups.items():
        if k != "true":
            print(
                f"  ranking vs {k:>9}: true continuation scores lower in {(true_lr < np.array(v)).mean():6.1%} of cuts"
            )
    for k, v in groups.items():
        arr = np.array(v)
        wrong = (arr > DEFAULT_THRESHOLD).mean() if k == "true" else (arr <= DEFAULT_THRESHOLD).mean()
        label = "flagged (false alarms)" if k == "true" else "missed"
        print(
            f"{k:>10}: p5 {np.percentile(arr, 5):6.2f}  p50 {np.median(arr):6.2f}  p95 {np.percentile(arr, 95):6.2f}"
            f"  {label} {wrong:6.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
