"""Fleet scale: generation, render, daemon CPU and memory, 100k runs, 50 concurrent scrapers.

    python benchmarks/bench_fleet.py [--quick]

Prints figures only; nothing here asserts a time. Record results in docs/benchmarks.md.
Every daemon is a real ``trainsim run`` on loopback (simulator.drills.stack); loads are bounded in
count and time. ``--quick`` shortens the timed phases (for a smoke run, not for the docs).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench_scrape_engine import _cpu_model, bench_scrape

from simulator.config import load_config
from simulator.drills.stack import DaemonProcess, start_daemon

# The fleet of deploy/kubernetes/configmap.yaml, sized by {count}.
FLEET = """
defaults: {{steps: 100000, loop: true, step_interval: 1s}}
fleet:
  count: {count}
  name_prefix: fleet
  seed: 7
  template:
    init: 5.5
    optimizer: {{kind: sgd}}
  learning_rate: {{log_uniform: [1e-3, 1.0]}}
  landscapes:
    quadratic: 0.8
    noisy_quadratic: {{weight: 0.2, landscape: {{dims: 8}}, init: 1}}
  failures: {{fraction: 0.05, kinds: [lr_spike, hang, nan, slow_steps], between: [5m, 30m],
             duration: 5m}}
"""
AVALANCHE_SERIES = 500 * 100  # avalanche's documented defaults: 500 metrics x 100 series
SCRAPE_TIMEOUT_SECONDS = 10.0


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks()  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def get(address: str, gzipped: bool, timeout: float = SCRAPE_TIMEOUT_SECONDS,
        ) -> tuple[int, int]:
    """One scrape on a fresh connection, as Prometheus sends it; (status, body bytes)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Accept-Encoding": "gzip"} if gzipped else {}
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def timed_scrapes(address: str, n: int, gzipped: bool) -> list[float]:
    """``n`` scrapes, each of a fresh snapshot (the fleet steps, and the daemon publishes a
    new snapshot, once a second; unchanged snapshots are served from the render cache)."""
    out = []
    for _ in range(n):
        time.sleep(1.05)
        t = time.perf_counter()
        status, _ = get(address, gzipped)
        out.append(time.perf_counter() - t)
        assert status == 200
    return out


def start(workdir: Path, count: int) -> tuple[DaemonProcess, float]:
    cfg = workdir / f"fleet-{count}.yaml"
    cfg.write_text(FLEET.format(count=count))
    t = time.perf_counter()
    d = start_daemon(workdir, cfg, timeout=300)
    return d, time.perf_counter() - t


def series_of(d: DaemonProcess) -> int:
    host, port = d.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    line = next(ln for ln in body.splitlines() if ln.startswith("trainsim_exposed_series "))
    return int(float(line.split()[1]))


def bench_generation() -> None:
    print("fleet generation (YAML -> validated RunSpecs):")
    for n in (10_000, 100_000):
        text = FLEET.format(count=n)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            load_config(text, "<bench>")
            times.append(time.perf_counter() - t)
        print(f"  {n:>7} runs  {statistics.median(times) * 1e3:8.1f} ms")
    print()


def bench_cpu_memory(workdir: Path, seconds: float) -> DaemonProcess:
    small, _ = start(workdir, 10)
    time.sleep(3)
    series_of(small)
    get(small.address, gzipped=True)
    rss_small = rss_bytes(small.proc.pid)  # after scrapes, like the big one below
    small.close()
    d, startup = start(workdir, 10_000)
    time.sleep(5)  # past start-up
    pid = d.proc.pid
    c0, t0 = cpu_seconds(pid), time.monotonic()
    scrapes = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(min(15.0, max(0.0, seconds - (time.monotonic() - t0))))
        if time.monotonic() - t0 < seconds:
            get(d.address, gzipped=True)  # a Prometheus-like scrape every 15 s
            scrapes += 1
    c1, t1 = cpu_seconds(pid), time.monotonic()
    series = series_of(d)
    get(d.address, gzipped=True)
    rss = rss_bytes(pid)  # steady state: render buffers and the scrape cache included
    print(f"daemon, 10,000 runs stepping once a second ({series} series), "
          f"started in {startup:.1f} s:")
    print(f"  CPU over {t1 - t0:.0f} s with {scrapes} gzip scrapes: "
          f"{(c1 - c0) / (t1 - t0) * 100:.1f}% of one core")
    print(f"  resident memory {rss / 2**20:.0f} MiB; with 10 runs {rss_small / 2**20:.0f} MiB; "
          f"per run {(rss - rss_small) / (10_000 - 10) / 1024:.1f} KiB")
    print(f"  avalanche's default load is {AVALANCHE_SERIES} series: "
          f"{AVALANCHE_SERIES / (series / 10_000):.0f} runs of this fleet "
          f"({series / 10_000:.1f} series per run)")
    print()
    return d


def bench_load(d: DaemonProcess, seconds: float, scrapers: int = 50) -> None:
    host, port = d.address.rsplit(":", 1)
    addr = (host, int(port))
    # Clients that must not hold anything up: idle connections, a half-sent request, and a
    # scraper that reads its answer 4 KiB every half second.
    idle = [socket.create_connection(addr) for _ in range(5)]
    partial = socket.create_connection(addr)
    partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(addr)
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    slow_read = [0]
    stop = threading.Event()

    def slow_reader() -> None:
        slow.settimeout(30)
        while not stop.is_set():
            try:
                chunk = slow.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            slow_read[0] += len(chunk)
            time.sleep(0.5)

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def scraper() -> None:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                status, _ = get(d.address, gzipped=True)
                ok = status == 200
                err = "" if ok else f"HTTP {status}"
            except OSError as exc:
                ok, err = False, repr(exc)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors.append(err)

    threads = [threading.Thread(target=scraper) for _ in range(scrapers)]
    reader = threading.Thread(target=slow_reader)
    c0 = cpu_seconds(d.proc.pid)
    t0 = time.monotonic()
    for th in (reader, *threads):
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(d.proc.pid) - c0
    stop.set()
    reader.join()
    # The server drops a connection that sent no complete request within its 10 s timeout.
    dropped = 0
    for s in (*idle, partial):
        s.settimeout(15)
        try:
            dropped += s.recv(1) == b""
        except OSError:
            dropped += 1
        s.close()
    slow.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"load: {scrapers} concurrent scrapers (gzip, new connection each) for "
          f"{elapsed:.0f} s against 10,000 runs, with 5 idle connections, 1 half-sent "
          f"request and 1 slow reader open:")
    print(f"  {len(latencies)} scrapes ({len(latencies) / elapsed:.1f}/s), {len(errors)} errors"
          + (f" (first: {errors[0]})" if errors else ""))
    print(f"  latency p50 {q[49] * 1e3:.0f} ms, p99 {q[98] * 1e3:.0f} ms, "
          f"max {latencies[-1] * 1e3:.0f} ms")
    print(f"  daemon CPU during the load {cpu / elapsed * 100:.0f}% of one core; the slow "
          f"reader got {slow_read[0] / 1024:.0f} KiB meanwhile")
    print(f"  idle/half-sent connections dropped by the server's timeout: {dropped} of "
          f"{len(idle) + 1}")
    print()


def bench_sizes(workdir: Path, sizes: list[int]) -> None:
    print("one process at growing fleet sizes (uncached scrape of a fresh snapshot, "
          "median of 5):")
    per_run: list[float] = []
    for n in sizes:
        d, startup = start(workdir, n)
        try:
            time.sleep(2)
            plain = statistics.median(timed_scrapes(d.address, 5, gzipped=False))
            gz = statistics.median(timed_scrapes(d.address, 5, gzipped=True))
            series = series_of(d)
            rss = rss_bytes(d.proc.pid)
        finally:
            d.close(timeout=30)
        per_run.append(gz / n)
        print(f"  {n:>7} runs, {series:>8} series: start {startup:5.1f} s, RSS "
              f"{rss / 2**20:5.0f} MiB, scrape {plain * 1e3:6.0f} ms plain / "
              f"{gz * 1e3:6.0f} ms gzip")
    worst = max(per_run)
    print(f"  largest fleet within a {SCRAPE_TIMEOUT_SECONDS:.0f} s scrape timeout, "
          f"extrapolated linearly from the slowest per-run gzip figure: "
          f"~{SCRAPE_TIMEOUT_SECONDS / worst / 1e3:.0f}k runs")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 30.0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}, "
          f"python {platform.python_version()}")
    print()
    bench_generation()
    bench_scrape(10_000, 3 if args.quick else 5)
    print()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        d = bench_cpu_memory(workdir, seconds)
        try:
            bench_load(d, seconds)
        finally:
            d.close(timeout=30)
        bench_sizes(workdir, [10_000, 30_000] if args.quick else [10_000, 30_000, 100_000])


if __name__ == "__main__":
    main()
