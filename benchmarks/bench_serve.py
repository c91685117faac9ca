"""``isonyc serve`` under concurrent connections: request latency with the listen backlog of 5 (http.server's
default) and with ``LISTEN_BACKLOG``.

    .venv/bin/python benchmarks/bench_serve.py                       # 50 clients × 20 requests each
    .venv/bin/python benchmarks/bench_serve.py --clients 100 --requests 10

Each client opens a fresh connection per request (as many browsers and proxies do for a burst of tiles), fetches
one 512² PNG-sized file and closes. All clients start together, so connections arrive in bursts. With a backlog of
5 the kernel drops SYNs beyond the queue and the client waits for a retransmit (1 s, then 3 s), which is the 4–5 s
p99 the issue measured at 50 concurrent connections.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.publish.serve import LISTEN_BACKLOG, MapServer  # noqa: E402

TILE_BYTES = 150_000  # a typical 512² pixel-art PNG


class Backlog5Server(MapServer):
    """The server as it was: http.server's default listen backlog."""

    request_queue_size = 5


def fetch(host: str, port: int, path: str) -> float:
    """Seconds for one request on a fresh connection (connect + request + full body)."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while s.recv(1 << 16):
            pass
    return time.perf_counter() - t0


def run(server_cls: type[MapServer], root: Path, clients: int, requests: int) -> np.ndarray:
    """Latencies (s) of clients × requests fetches, all clients released at once."""
    with server_cls(root, port=0).start() as server:
        host, port = server.server_address[:2]
        latencies: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(clients)

        def client(i: int) -> None:
            start.wait()
            mine = [fetch(host, port, f"/tiles/{(i + k) % 16}.png") for k in range(requests)]
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return np.array(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tiles").mkdir()
        for i in range(16):
            (root / "tiles" / f"{i}.png").write_bytes(os.urandom(TILE_BYTES))
        print(
            f"{args.clients} concurrent clients × {args.requests} requests, a new connection each, {TILE_BYTES:,} B"
        )
        print(f"{'listen backlog':>16} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8}")
        for cls, backlog in ((Backlog5Server, 5), (MapServer, LISTEN_BACKLOG)):
            t0 = time.perf_counter()
            lat = run(cls, root, args.clients, args.requests) * 1000
            rate = len(lat) / (time.perf_counter() - t0)
            p50, p90, p99 = np.percentile(lat, [50, 90, 99])
            print(f"{backlog:>16} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {lat.max():>8.1f} {rate:>8.0f}")


if __name__ == "__main__":
    main()
