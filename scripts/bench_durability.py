#!/usr/bin/env python3
"""SQLite `durability: normal` against `full` (issue 15): publishes per second and ack latency.

What it measures: `POST /api/v1/channels/{name}/events` answers 201 once the event's
transaction has committed; under `normal` (synchronous=NORMAL, WAL) a commit is not fsynced,
under `full` (synchronous=FULL) every commit should fsync the WAL before the answer (check it
with `strace -f -c -e trace=fdatasync` on the server: at 83a5812 it did not, see
docs/benchmarks.md, "Durability: normal against full"). For each mode it runs two scenarios,
each for --seconds after a short warm-up, on a fresh server and a fresh data directory (under
the system temp dir, so on its disk) every run:

  seq   one publisher, one keep-alive connection, one POST after another
  conc  --concurrency publishers, each with its own keep-alive connection and channel: asyncio
        tasks sharing an httpx.AsyncClient, spread over --processes client processes (one
        Python process cannot drive 32 connections through httpx faster than ~180 POSTs/s)

Runs are interleaved (normal, full, normal, full, ...) --reps times; the table gives the median
with min-max of publishes/s, ack p50 and ack p99 (ms, from the POST to its 201, as the client
sees it), and full/normal of the medians. It also prints the load average at start and end, the
server's and the clients' CPU per publish (all processes share the machine's cores), and the
disk's raw fdatasync latency and the commits/s of bare SQLite (Python's sqlite3, WAL, one-row
transactions) under NORMAL and FULL in the same directory: what `full` adds per commit there.

Needs only the clone and its venv (httpx): release build in .build-release, then
    .venv/bin/python scripts/bench_durability.py [--seconds 20] [--reps 3] [--concurrency 32]
    .venv/bin/python scripts/bench_durability.py --binary .build-release/release/herald  # no build
(--commit names the commit the binary was built from in the report; default: the clone's HEAD)
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from benchlib import HeraldProcess, release_binary

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "bench-durability-key-0123456789"


def herald(binary, durability):
    """A fresh server with this durability, on a fresh data directory (so under the temp dir's disk)."""
    return HeraldProcess(binary, KEY, ["--config", "{data}/config.json"], prefix=f"herald-durability-{durability}-",
                         files={"config.json": json.dumps({"durability": durability})})


async def publish_for(url, first, publishers, start_at, warmup, seconds):
    """`publishers` tasks POST events back to back from wall-clock `start_at` on; returns (all
    POSTs including the warm-up, ack latencies in ms of those sent after it, CPU seconds used)."""
    limits = httpx.Limits(max_connections=publishers, max_keepalive_connections=publishers)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=30) as client:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        measure_from, end = start_at + warmup, start_at + warmup + seconds
        latencies, total = [], 0

        async def publisher(n):
            nonlocal total
            body = {"type": "bench.durability", "data": {"publisher": n, "pad": "x" * 100}}
            while (sent := time.time()) < end:
                began = time.perf_counter()
                response = await client.post(f"/api/v1/channels/bench-{n}/events", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"publish answered {response.status_code}: {response.text[:200]}")
                total += 1
                if sent >= measure_from:
                    latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(publisher(n) for n in range(first, first + publishers)))
    return total, latencies, time.process_time() - cpu


def client_process(args):
    return asyncio.run(publish_for(*args))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fdatasync_ms(samples=200):
    """Median and p99 of one 4 KiB append + fdatasync in the temp dir (the disk `full` waits on)."""
    directory = tempfile.mkdtemp(prefix="herald-fsync-")
    path = os.path.join(directory, "probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(samples):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(times), percentile(times, 99)


def sqlite_commits_per_s(synchronous, seconds=2.0):
    """One-row transactions per second of bare SQLite in WAL mode with this synchronous level."""
    directory = tempfile.mkdtemp(prefix="herald-sqlite-")
    try:
        db = sqlite3.connect(os.path.join(directory, "probe.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("CREATE TABLE t (x TEXT)")
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            db.execute("INSERT INTO t VALUES (?)", ("x" * 200,))
            count += 1
        db.close()
        return count / seconds
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_one(binary, mode, publishers, processes, seconds, warmup=2.0):
    server = herald(binary, mode)
    processes = min(processes, publishers)
    try:
        start_at = time.time() + 1.0  # after the client processes are up
        shares = [publishers // processes + (p < publishers % processes) for p in range(processes)]
        jobs = [(server.url, sum(shares[:p]), shares[p], start_at, warmup, seconds) for p in range(processes)]
        cpu_before = server.cpu_seconds()
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(client_process, jobs)
        cpu = server.cpu_seconds() - cpu_before
    finally:
        server.stop()
    total = sum(part[0] for part in parts)
    latencies = [ms for part in parts for ms in part[1]]
    client_cpu = sum(part[2] for part in parts)
    return dict(rate=len(latencies) / seconds, p50=percentile(latencies, 50), p99=percentile(latencies, 99),
                srv_us=cpu / total * 1e6, cli_us=client_cpu / total * 1e6, count=len(latencies))


def summary(runs, key):
    values = [r[key] for r in runs]
    return statistics.median(values), min(values), max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds of each run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each mode")
    parser.add_argument("--concurrency", type=int, default=32, help="publishers of the concurrent scenario")
    parser.add_argument("--processes", type=int, default=4, help="client processes of the concurrent scenario")
    parser.add_argument("--binary", help="a herald binary (default: build .build-release and use it)")
    parser.add_argument("--commit", help="the commit the binary was built from (default: the clone's HEAD)")
    args = parser.parse_args()

    binary = release_binary(args.binary)

    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.strip()
    load_start = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    sync_p50, sync_p99 = fdatasync_ms()
    bare = {level: sqlite_commits_per_s(level) for level in ("NORMAL", "FULL")}
    scenarios = (("seq", 1), ("conc", args.concurrency))
    results = {(s, m): [] for s, _ in scenarios for m in ("normal", "full")}
    for rep in range(args.reps):
        for mode in ("normal", "full"):
            for scenario, publishers in scenarios:
                r = run_one(binary, mode, publishers, args.processes, args.seconds)
                results[(scenario, mode)].append(r)
                print(f"rep {rep + 1} {mode:6} {scenario:4}: {r['rate']:8.1f}/s p50 {r['p50']:6.2f} ms "
                      f"p99 {r['p99']:6.2f} ms  srv {r['srv_us']:.0f} us/pub  client {r['cli_us']:.0f} us/pub",
                      file=sys.stderr, flush=True)
    load_end = pathlib.Path("/proc/loadavg").read_text().split()[:3]

    print(f"commit {commit}; load average {' '.join(load_start)} at start, {' '.join(load_end)} at end; "
          f"{args.reps} interleaved reps of {args.seconds:g} s, {args.processes} client processes for "
          f"{args.concurrency} publishers; fdatasync of 4 KiB in {tempfile.gettempdir()}: "
          f"p50 {sync_p50:.2f} ms, p99 {sync_p99:.2f} ms; bare SQLite one-row commits/s: "
          f"NORMAL {bare['NORMAL']:,.0f}, FULL {bare['FULL']:,.0f}\n")
    print("| scenario | durability | publishes/s (min-max) | ack p50 ms (min-max) | ack p99 ms (min-max) "
          "| srv CPU us/publish | client CPU us/publish |")
    print("|---|---|---|---|---|---|---|")
    for scenario, publishers in scenarios:
        label = "1 sequential publisher" if publishers == 1 else f"{publishers} concurrent publishers"
        for mode in ("normal", "full"):
            runs = results[(scenario, mode)]
            cells = []
            for key, fmt in (("rate", "{:,.0f}"), ("p50", "{:.2f}"), ("p99", "{:.2f}")):
                med, lo, hi = summary(runs, key)
                cells.append(f"{fmt.format(med)} ({fmt.format(lo)}-{fmt.format(hi)})")
            print(f"| {label} | {mode} | {' | '.join(cells)} | {summary(runs, 'srv_us')[0]:.0f} "
                  f"| {summary(runs, 'cli_us')[0]:.0f} |")
        ratios = [summary(results[(scenario, 'full')], k)[0] / summary(results[(scenario, 'normal')], k)[0]
                  for k in ("rate", "p50", "p99")]
        print(f"| {label} | full/normal | {ratios[0]:.2f}x | {ratios[1]:.2f}x | {ratios[2]:.2f}x | | |")
    print(json.dumps(dict(commit=commit, load_start=load_start, load_end=load_end, fdatasync_p50_ms=sync_p50,
                          fdatasync_p99_ms=sync_p99, sqlite_commits_per_s=bare,
                          runs={f"{s}/{m}": v for (s, m), v in results.items()})))


if __name__ == "__main__":
    main()
