"""Chaos: `isonyc demo` under N random kill -9s, resumed each time by simply running it again.

    python benchmarks/chaos.py --kills 20 [--seed 7] [--workdir DIR]

First a clean run in its own directory gives the reference map and the clean wall time. Then one chained run in
another directory: the demo is started, killed with SIGKILL at a random moment of a clean run's duration, and
started again, N times; the last start runs to the end. After every kill the store's active tiles are checked:
none may disappear or fail verification (``tiles lost``). At the end the map is compared with the clean one,
decoded tile by tile (``tiles differing``). Prints one table; exits 1 if a goal (0 lost, 0 differing, every
restart resumed without help) is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Attempt:
    seconds: float
    killed: bool
    returncode: int | None


@dataclass
class ChaosResult:
    clean_s: float = 0.0
    chaos_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    runs: int = 0
    tiles_lost: int = 0
    tiles_differing: int = 0
    resumed_without_help: bool = False

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)


def demo_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ISONYC_CONFIG", None)
    env |= {"DAGSTER_HOME": str(workdir / "data" / "dagster_home"), "DAGSTER_DISABLE_TELEMETRY": "1"}
    return env


def run_demo(workdir: Path, kill_after: float | None = None, timeout: float = 900.0) -> Attempt:
    """Run ``isonyc demo`` in ``workdir``; SIGKILL its whole process group after ``kill_after`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(workdir / "demo.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "isonyc_dagster.cli", "demo"],
            cwd=workdir,
            env=demo_env(workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=kill_after if kill_after is not None else timeout)
            return Attempt(time.monotonic() - t0, False, proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if kill_after is None:
                raise RuntimeError(
                    f"isonyc demo did not finish within {timeout:.0f} s (see {workdir}/demo.log)"
                ) from None
            return Attempt(time.monotonic() - t0, True, None)


def map_hashes(map_dir: Path) -> dict[str, str]:
    """sha256 of every full-resolution tile of the map, decoded to RGBA."""
    out: dict[str, str] = {}
    for dzi in sorted(map_dir.glob("*.dzi")):
        files = map_dir / f"{dzi.stem}_files"
        top = max(int(p.name) for p in files.iterdir() if p.name.isdigit())
        for f in sorted((files / str(top)).iterdir()):
            with Image.open(f) as im:
                rgba = np.asarray(im.convert("RGBA"))
            out[f"{dzi.stem}/{f.stem}"] = hashlib.sha256(rgba.tobytes()).hexdigest()
    return out


def active_tiles(workdir: Path) -> dict[tuple[str, int, int], str]:
    """Every active (layer, x, y) → sha256 in the demo's store; reading each blob checks it against its hash
    (the store raises ``CorruptBlobError`` on a mismatch)."""
    from isonyc_dagster.store.local import LocalTileStore

    root = workdir / "data" / "store"
    if not (root / "index.sqlite").exists():
        return {}
    store = LocalTileStore(root)
    try:
        out = {}
        for layer in ("render", "generation", "water_mask"):
            for v in store.list_active(layer):
                store.get_blob(v.sha256)
                out[(layer, v.x, v.y)] = v.sha256
        return out
    finally:
        store.close()


def count_runs(workdir: Path) -> int:
    import dagster as dg

    home = workdir / "data" / "dagster_home"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return len(instance.get_run_records())


def clean_run(workdir: Path) -> tuple[float, dict[str, str]]:
    """A clean demo in ``workdir``: its wall time and its map's tile hashes."""
    clean = run_demo(workdir)
    if clean.returncode != 0:
        raise RuntimeError(f"the clean run failed (see {workdir / 'demo.log'})")
    return clean.seconds, map_hashes(workdir / "data" / "map")


def chaos(kills: int, seed: int, base: Path) -> ChaosResult:
    """A clean run, then ``kills`` random kills of a chained run in another directory, then its last start."""
    clean_s, reference = clean_run(base / "clean")
    return chain(base / "chaos", kills, seed, clean_s, reference)


def chain(work: Path, kills: int, seed: int, clean_s: float, reference: dict[str, str]) -> ChaosResult:
    """Kill the demo ``kills`` times at random moments and let every kill be followed by a plain restart.

    Each start is killed after a random time up to a clean run's duration; a start that finishes first ends a
    cycle: its map is compared with the clean one and the next cycle starts from scratch in a new directory, so
    kills keep landing in the middle of real work. The last cycle is restarted until it finishes.
    """
    res = ChaosResult(clean_s=clean_s)
    rng = random.Random(seed)
    t0 = time.monotonic()
    cycle = 0

    def finish(cycle_dir: Path, attempt: Attempt) -> None:
        res.resumed_without_help = res.resumed_without_help and attempt.returncode == 0
        got = map_hashes(cycle_dir / "data" / "map") if attempt.returncode == 0 else {}
        res.tiles_differing += sum(got.get(k) != h for k, h in reference.items()) + len(
            set(got) - set(reference)
        )
        res.runs += count_runs(cycle_dir)

    res.resumed_without_help = True
    cycle_dir = work / f"cycle{cycle}"
    before: dict[tuple[str, int, int], str] = {}
    while res.kills < kills:
        attempt = run_demo(cycle_dir, kill_after=rng.uniform(0.5, clean_s))
        res.attempts.append(attempt)
        after = active_tiles(cycle_dir)
        res.tiles_lost += sum(1 for k in before if k not in after)
        before = after
        if not attempt.killed:
            finish(cycle_dir, attempt)
            cycle += 1
            cycle_dir, before = work / f"cycle{cycle}", {}
    if before or cycle_dir.exists():
        final = run_demo(cycle_dir)
        res.attempts.append(final)
        res.tiles_lost += sum(1 for k in before if k not in active_tiles(cycle_dir))
        finish(cycle_dir, final)
    res.chaos_s = time.monotonic() - t0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temporary dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="isonyc-chaos-") as tmp:
        base = args.workdir or Path(tmp)
        r = chaos(args.kills, args.seed, base)
    ok = r.tiles_lost == 0 and r.tiles_differing == 0 and r.resumed_without_help
    rows = [
        ("kills (SIGKILL at random moments)", r.kills),
        ("starts after a kill (each resumed by a plain restart)", r.kills),
        ("fresh maps completed", sum(not a.killed for a in r.attempts)),
        ("resumed without help", "yes" if r.resumed_without_help else "NO"),
        ("Dagster runs in the chaotic instances", r.runs),
        ("tiles lost (goal 0)", r.tiles_lost),
        ("tiles differing from the clean run (goal 0)", r.tiles_differing),
        ("clean wall time", f"{r.clean_s:.1f} s"),
        (
            "chaotic wall time",
            f"{r.chaos_s:.1f} s for {sum(not a.killed for a in r.attempts)} maps "
            f"({r.chaos_s / max(1, sum(not a.killed for a in r.attempts)) / r.clean_s:.2f}× clean per map)",
        ),
    ]
    for name, value in rows:
        print(f"{name:<46} {value}")
    print(json.dumps({"kill_moments_s": [round(a.seconds, 1) for a in r.attempts if a.killed]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
