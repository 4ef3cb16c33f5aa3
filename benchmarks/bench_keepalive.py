"""/metrics latency on a fresh connection per request against one kept-alive connection.

    python benchmarks/bench_keepalive.py [--requests 200] [--rounds 4]

Prints figures only; nothing here asserts a time. Record results in docs/benchmarks.md.
The daemon is a real ``trainsim run`` on loopback (simulator.drills.stack) with the embedded
seed config. Each round times ``--requests`` scrapes in each mode, alternating the modes
(fresh, kept-alive, fresh, kept-alive, ...) so that both see the same machine; the figures are
over all rounds. A scrape is a GET with ``Accept-Encoding: gzip``, as Prometheus sends it,
read to its end; latency is client-side wall time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from simulator.drills.stack import start_daemon

HEADERS = {"Accept-Encoding": "gzip"}


def scrape(conn: http.client.HTTPConnection) -> float:
    """One /metrics scrape on ``conn``; its latency in seconds."""
    t = time.perf_counter()
    conn.request("GET", "/metrics", headers=HEADERS)
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - t
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}")
    return elapsed


def fresh(host: str, port: int, n: int) -> list[float]:
    """``n`` scrapes, each on a new connection (connect, request, read, close)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            scrape(conn)
        finally:
            conn.close()
        out.append(time.perf_counter() - t)
    return out


def kept_alive(host: str, port: int, n: int) -> list[float]:
    """``n`` scrapes on one connection, reused (it is opened before the first is timed)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.connect()
        return [scrape(conn) for _ in range(n)]
    finally:
        conn.close()


def summary(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return (f"  {name:<22} median {statistics.median(times) * 1e3:7.2f} ms   "
            f"p90 {q[8] * 1e3:7.2f} ms   ({len(times)} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        d = start_daemon(Path(tmp))
        try:
            host, port = d.address.rsplit(":", 1)
            fresh(host, int(port), 20)  # warm-up: the first render, caches
            kept_alive(host, int(port), 20)
            results: dict[str, list[float]] = {"fresh connection": [], "kept-alive connection": []}
            for _ in range(args.rounds):
                results["fresh connection"] += fresh(host, int(port), args.requests)
                results["kept-alive connection"] += kept_alive(host, int(port), args.requests)
        finally:
            d.close()
    print(f"/metrics latency, {args.rounds} alternating rounds of {args.requests} requests "
          "per mode:")
    for name, times in results.items():
        print(summary(name, times))
    gap = (statistics.median(results["kept-alive connection"])
           - statistics.median(results["fresh connection"]))
    print(f"  kept-alive minus fresh, median: {gap * 1e3:+.2f} ms")


if __name__ == "__main__":
    main()
