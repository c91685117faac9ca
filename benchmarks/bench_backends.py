"""Overhead of the backend layer, measured against baselines in the same process.

1. ``validate_image`` on a 1024² RGB PNG vs a bare PIL decode (the price of strict validation);
2. one ``ModalBackend.generate`` round trip (retry loop, breaker, semaphore, schema, validation)
   against a local edit_b64 server vs a raw ``httpx.post`` of the same payload;
3. ``seam_score`` on one 512 px quadrant edge, and ``score_step_seams`` for a corner step (4 edges).

    .venv/bin/python benchmarks/bench_backends.py
"""

from __future__ import annotations

import base64
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.backends.base import GenerationRequest  # noqa: E402
from isonyc_dagster.backends.modal import ModalBackend  # noqa: E402
from isonyc_dagster.backends.transport import HttpSettings  # noqa: E402
from isonyc_dagster.backends.validate import validate_image  # noqa: E402
from isonyc_dagster.generate.seams import score_step_seams, seam_score  # noqa: E402
from isonyc_dagster.images import png_bytes  # noqa: E402
from tests.fake_apis import FakeModal, make_template  # noqa: E402


def timeit(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # pixel-art-like
    png = png_bytes(blocks)

    base = timeit(lambda: Image.open(io.BytesIO(png)).load(), 20)
    ours = timeit(lambda: validate_image(png, expected_size=(1024, 1024)), 20)
    print(f"validate 1024² PNG: {ours * 1e3:.1f} ms vs bare decode {base * 1e3:.1f} ms (×{ours / base:.2f})")

    template = make_template(1024)[0]
    with FakeModal() as api:
        backend = ModalBackend(f"{api.url}/edit_b64", http=HttpSettings(timeout_s=30))
        payload = {"image_b64": base64.b64encode(template).decode(), "prompt": "p", "steps": 14, "seed": 1}
        with httpx.Client(timeout=30) as raw:
            raw_t = timeit(lambda: raw.post(f"{api.url}/edit_b64", json=payload).json(), 8)
        ours_t = timeit(lambda: backend.generate(GenerationRequest(template, seed=1)), 8)
        backend.close()
    print(
        f"modal round trip (1024² template, local fake server): {ours_t * 1e3:.1f} ms vs raw httpx "
        f"{raw_t * 1e3:.1f} ms (×{ours_t / raw_t:.2f}; the difference is validation + schema)"
    )

    q = 512
    world = rng.integers(0, 255, (3 * q // 8, 3 * q // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    a, b = world[:q, :q], world[:q, q : 2 * q]
    edge = timeit(lambda: seam_score(a, b, "lr"), 20)
    quads = {(x, y): world[y * q : (y + 1) * q, x * q : (x + 1) * q] for x in range(3) for y in range(3)}
    new = {(1, 1): quads[(1, 1)]}
    ctx = {k: v for k, v in quads.items() if k != (1, 1)}
    corner = timeit(lambda: score_step_seams(new, ctx), 10)
    print(
        f"seam_score one 512 px edge: {edge * 1e3:.2f} ms; corner step (4 edges): {corner * 1e3:.2f} ms "
        f"(×{corner / edge:.2f} of one edge)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
