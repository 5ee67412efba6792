#!/usr/bin/env python3
"""How long a janitor pass over a million rows holds up publishes (issue 15).

Issue 15: "with a million checks, events and deliveries in the store, a publish during a janitor
pass is not delayed by more than a few tens of milliseconds". This seeds a SQLite store with
--rows rows of each kind past retention, lets Herald's janitor (`SQLiteStore.prune`) remove them
while one sequential publisher posts events back to back, and compares each publish's latency
during the pass with the same publisher's before it.

The store, seeded once with Python's sqlite3 after the first --binary has created its schema
(so list the binary with the oldest schema first; only columns of schema v7 are written):

  expiring (all past retention in the measured pass, their times in one 10-s band 2 h old):
    --rows ended checks (done/failed), each with its channel `check:<id>` and
        --events-per-check events (~250 B of check JSON each)
    --rows application events (~200 B) over --channels channels `app-<n>`
    --rows delivered webhook deliveries (~200 B payload; half a check's callback, half a
        subscription's), each with one delivery_attempts row
  kept (younger than retention, so the janitor must pass them by): --rows/10 of each kind,
    their times in the 10 minutes before seeding, events over 1,000 channels `live-<n>`.

Check and delivery ids are random, as Herald's are, so deleting oldest first touches pages all
over the ids' indexes. For each run the seeded file is copied to a fresh data directory under the
system temp dir; then:

  1. migrate: the binary is started with its default retention (which keeps every seeded row)
     until it listens, and stopped with SIGTERM; for a newer binary this runs its migrations
     (v8 builds the janitor's indexes); the time to `listening` is reported as "open s";
  2. 1,000 idempotency keys 25 h old are added (every pass removes them, so the first pass logs
     `pruned` and tells when it ended) and the WAL is checkpointed;
  3. measure: the binary is started with `janitor-interval` --interval and `check-retention` =
     `history-max-age` = R seconds, R chosen from the clock at start so that the start-up pass
     finds nothing of the band past retention and the next pass, --interval seconds after the
     first ended, finds all of it. `--log-level debug` makes each pass that removed something log
     `pruned` with its row count; the pass is [first pass's log + interval, second pass's log].
     One publisher (httpx.Client, one keep-alive connection) POSTs ~150-byte events to one
     channel back to back from `listening` until --after seconds past the pass.

A publish counts as "during the pass" if it was in flight at any time within the pass; the
baseline is the publishes sent in the --baseline seconds before the pass (the same store,
the janitor asleep). The table has one row per run (binaries interleaved, --reps each; with 3 or
more, a median row too): the time to `listening` of the migrate step, the pass's duration, the
rows it removed as Herald counts them (03f6daa counts a check's channel, 7462b1b does not; neither
counts the events and delivery attempts that cascade), the publishes during it, their p50, p99
and max latency, how many took over 50 ms, the baseline's p50, p99 and max, p50 during/baseline,
the largest -wal size seen (sampled every 0.2 s) and the load average at the start and end of
the measured run. After each run the rows left are counted (all expiring rows gone, all kept rows
kept: printed per run on stderr); the last line of the output is every figure as JSON.

Needs only the clone and its venv (httpx):
    .venv/bin/python scripts/bench_janitor.py [--rows 1000000] [--reps 2]   # builds .build-release
    .venv/bin/python scripts/bench_janitor.py --binary before=/tmp/old/herald --binary after=PATH
(--binary LABEL=PATH or PATH, repeatable, oldest schema first; default: release build of the
clone's HEAD. --keep-seed DIR keeps (or reuses) the seeded file there; with --reps 0 it only seeds.)
At 1,000,000 rows seeding takes about 4 minutes and makes a 2.3 GiB file; each run copies it
(so about 5 GiB free in the temp dir) and takes 3-10 minutes (03f6daa's pass about 105 s,
7462b1b's about 450 s, on a 2-vCPU VM).
"""

import argparse
import base64
import json
import os
import pathlib
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "bench-janitor-key-0123456789abcdef"
HOUR_MS = 3_600_000
BAND_AGE_MS = 2 * HOUR_MS  # the expiring rows' band ends this long before seeding
BAND_MS = 10_000  # ... and is this wide
KEPT_MS = 600_000  # kept rows: the last 10 minutes before seeding


def loadavg():
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Herald:
    """One `herald serve` on `data`; stderr lines are kept with their arrival time."""

    def __init__(self, binary, data, env=None):
        self.started = time.time()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        environment.update(env or {})
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", data, "--api-key", KEY],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        self.log = []  # (time, line)
        self.pruned = []  # (time, rows)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        for line in self.proc.stdout:
            if "listening on http://" in line:
                self.url = line.split("listening on ", 1)[1].split()[0].rstrip("/")
                self.listening = time.time()
                break
        else:
            raise RuntimeError(f"herald exited with {self.proc.wait()} before listening: {self.log[-5:]}")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            now = time.time()
            self.log.append((now, line.rstrip()))
            if " pruned" in line:
                match = re.search(r"herald\.rows=(\d+)", line)
                self.pruned.append((now, int(match.group(1)) if match else -1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# Seeding -------------------------------------------------------------------------------------

RNG = random.Random(15)  # the seeded store is the same on every run of the script


def token(n):
    """`n` random bytes in URL-safe base64 without padding, as Herald's ids and epochs are."""
    return base64.urlsafe_b64encode(RNG.randbytes(n)).decode().rstrip("=")


def check_id():
    return token(16)


def hex_pad(n):
    return RNG.randbytes(n).hex()


def check_json(cid, state, created, updated):
    """About 250 bytes, the shape of a check's event."""
    return (f'{{"id":"{cid}","kind":"http","state":"{state}","version":2,"params":{{"url":'
            f'"https://status.example.com/health","method":"GET","timeout_ms":5000}},"result":'
            f'{{"status":200,"duration_ms":42}},"created_at":{created},"updated_at":{updated}}}')


def seed(path, rows, channels, events_per_check, now_ms):
    """Writes the rows described in the docstring; returns the counts it expects to stay/go."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys = OFF")  # the rows are consistent; checking them is slow
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -2000000")
    band_start = now_ms - BAND_AGE_MS - BAND_MS
    kept = rows // 10
    params = json.dumps({"url": "https://status.example.com/health", "method": "GET", "timeout_ms": 5000,
                         "headers": {"accept": "application/json"}}, separators=(",", ":"))
    result = json.dumps({"status": 200, "duration_ms": 42, "body_sha256": hex_pad(32)},
                        separators=(",", ":"))

    def times(n, start, width):
        return (start + i * width // max(1, n) for i in range(n))

    def checks(n, start, width):
        for t in times(n, start, width):
            yield check_id(), t - 1500, t, ("done" if t % 7 else "failed")

    all_checks = [(c, "expiring") for c in checks(rows, band_start, BAND_MS)]
    all_checks += [(c, "kept") for c in checks(kept, now_ms - KEPT_MS, KEPT_MS)]
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO checks (id, kind, params, state, result, error, version, created_at, updated_at, "
        "completed_at) VALUES (?, 'http', ?, ?, ?, NULL, 2, ?, ?, ?)",
        ((cid, params, state, result, created, done, done) for (cid, created, done, state), _ in all_checks))
    db.executemany(
        "INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES (?, ?, ?, ?)",
        (("check:" + cid, token(6), events_per_check, done)
         for (cid, created, done, state), _ in all_checks))

    def check_events():
        for (cid, created, done, state), _ in all_checks:
            for offset in range(1, events_per_check + 1):
                last = offset == events_per_check
                t = done if last else created + offset
                yield ("check:" + cid, offset, "check." + state if last else "check.updated", t,
                       check_json(cid, state if last else "processing", created, t))

    db.executemany("INSERT INTO events (channel, offset, type, time, data) VALUES (?, ?, ?, ?, ?)",
                   check_events())
    db.execute("COMMIT")

    db.execute("BEGIN")
    for prefix, n, start, width, count in (("app", rows, band_start, BAND_MS, channels),
                                           ("live", kept, now_ms - KEPT_MS, KEPT_MS, 1000)):
        offsets, last_time = {}, {}

        def generate():
            for i, t in enumerate(times(n, start, width)):
                name = f"{prefix}-{i % count}"
                offsets[name] = offsets.get(name, 0) + 1
                last_time[name] = t
                data = (f'{{"order":{i},"status":"shipped","sku":"SKU-{i % 9973:05d}",'
                        f'"note":"{hex_pad(69)}"}}')  # ~200 bytes
                yield name, offsets[name], "order.updated", t, data

        db.executemany("INSERT INTO events (channel, offset, type, time, data) VALUES (?, ?, ?, ?, ?)",
                       generate())
        db.executemany("INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES (?, ?, ?, ?)",
                       ((name, token(6), offsets[name], last_time[name]) for name in offsets))
    db.execute("COMMIT")

    expiring_checks = [c for c, kind in all_checks if kind == "expiring"]
    kept_checks = [c for c, kind in all_checks if kind == "kept"]

    def deliveries(n, start, width, owners):
        for i, t in enumerate(times(n, start, width)):
            did = token(16)
            owner = owners[i % len(owners)][0] if i % 2 else None
            payload = (f'{{"type":"check.done","check_id":"{owner or check_id()}","status":200,'
                       f'"pad":"{hex_pad(70)}"}}')  # ~200 bytes
            yield (did, None if owner else "sub_" + str(i % 50), owner,
                   "https://hooks.example.com/herald/" + str(i % 50), "whsec_" + hex_pad(12),
                   "check.done", t - 900, payload, t - 1000, t, "https://hooks.example.com:443")

    db.execute("BEGIN")
    for n, start, width, owners in ((rows, band_start, BAND_MS, expiring_checks),
                                    (kept, now_ms - KEPT_MS, KEPT_MS, kept_checks)):
        ids = []

        def generate():
            for row in deliveries(n, start, width, owners):
                ids.append((row[0], row[9]))
                yield row

        db.executemany(
            "INSERT INTO deliveries (id, subscription_id, check_id, target_url, secret, event_type, event_time, "
            "payload, state, attempts, next_attempt_at, created_at, updated_at, target, lease) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'delivered', 1, NULL, ?, ?, ?, 1)", generate())
        db.executemany(
            "INSERT INTO delivery_attempts (delivery_id, at, status_code, duration_ms, error, snippet) "
            "VALUES (?, ?, 204, 37, NULL, NULL)", ids)
        del ids
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return band_start + BAND_MS


def count_rows(path, band_end):
    """Rows of the band left and rows of the kept period, by table (read-only, after a run)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    q = lambda sql, *a: db.execute(sql, a).fetchone()[0]  # noqa: E731
    counts = dict(
        expiring_checks=q("SELECT COUNT(*) FROM checks WHERE completed_at <= ?", band_end),
        expiring_check_channels=q("SELECT COUNT(*) FROM channels WHERE name LIKE 'check:%' AND updated_at <= ?",
                                  band_end),
        expiring_events=q("SELECT COUNT(*) FROM events WHERE time <= ?", band_end),
        expiring_app_channels=q("SELECT COUNT(*) FROM channels WHERE name LIKE 'app-%'"),
        expiring_deliveries=q("SELECT COUNT(*) FROM deliveries WHERE updated_at <= ?", band_end),
        kept_checks=q("SELECT COUNT(*) FROM checks WHERE completed_at > ?", band_end),
        kept_events=q("SELECT COUNT(*) FROM events WHERE time > ?", band_end),
        kept_deliveries=q("SELECT COUNT(*) FROM deliveries WHERE updated_at > ?", band_end),
        delivery_attempts=q("SELECT COUNT(*) FROM delivery_attempts"),
        idempotency_keys=q("SELECT COUNT(*) FROM idempotency_keys"),
    )
    db.close()
    return counts


def make_seed(binary, directory, rows, channels, events_per_check):
    """Creates the schema with `binary` (start, stop) and seeds it; returns (file, band end ms)."""
    store = os.path.join(directory, "store")
    herald = Herald(binary, store)
    herald.stop()
    path = os.path.join(store, "herald.sqlite")
    began = time.time()
    band_end = seed(path, rows, channels, events_per_check, int(time.time() * 1000))
    print(f"seeded {rows:,} expiring rows of each kind (+{rows // 10:,} kept) in {time.time() - began:.0f} s: "
          f"{os.path.getsize(path) / 2**20:,.0f} MiB", file=sys.stderr, flush=True)
    (pathlib.Path(directory) / "band_end").write_text(str(band_end))
    return path, band_end


# One run -------------------------------------------------------------------------------------

def run_one(binary, seed_path, band_end, interval, baseline, after, timeout):
    data = tempfile.mkdtemp(prefix="herald-janitor-")
    try:
        store = os.path.join(data, "store")
        os.makedirs(store)
        shutil.copyfile(seed_path, os.path.join(store, "herald.sqlite"))
        path = os.path.join(store, "herald.sqlite")

        # 1. migrate (and time the opening), with retention that keeps every seeded row
        herald = Herald(binary, store)
        open_s = herald.listening - herald.started
        herald.stop()

        # 2. the canary keys, and an empty WAL
        db = sqlite3.connect(path, isolation_level=None)
        old = int(time.time() * 1000) - 25 * HOUR_MS
        db.execute("BEGIN")
        db.executemany("INSERT INTO idempotency_keys (key, fingerprint, check_id, created_at) VALUES (?, ?, ?, ?)",
                       ((f"canary-{i}", "f" * 64, check_id(), old + i) for i in range(1000)))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        db_mib = os.path.getsize(path) / 2**20

        # 3. measure
        load_start = loadavg()
        spawn_ms = int(time.time() * 1000)
        retention = (spawn_ms - band_end) // 1000 + interval // 2
        herald = Herald(binary, store, env={
            "HERALD_LOG_LEVEL": "debug", "HERALD_JANITOR_INTERVAL": str(interval),
            "HERALD_CHECK_RETENTION": str(retention), "HERALD_HISTORY_MAX_AGE": str(retention)})
        wal = os.path.join(store, "herald.sqlite-wal")
        wal_max = [0]
        done = threading.Event()

        def sample_wal():
            while not done.wait(0.2):
                try:
                    wal_max[0] = max(wal_max[0], os.path.getsize(wal))
                except OSError:
                    pass

        threading.Thread(target=sample_wal, daemon=True).start()
        publishes = []  # (sent, answered) wall-clock seconds
        body = {"type": "bench.janitor", "data": {"n": 0, "pad": "x" * 100}}
        deadline = time.time() + timeout
        with httpx.Client(base_url=herald.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=None) as client:
            n = 0
            while time.time() < deadline:
                if len(herald.pruned) >= 2 and time.time() > herald.pruned[1][0] + after:
                    break
                n += 1
                body["data"]["n"] = n
                sent = time.time()
                began = time.perf_counter()
                response = client.post("/api/v1/channels/bench-janitor/events", json=body)
                elapsed = time.perf_counter() - began
                if response.status_code != 201:
                    raise RuntimeError(f"publish answered {response.status_code}: {response.text[:200]}")
                publishes.append((sent, sent + elapsed))
        done.set()
        load_end = loadavg()
        code = herald.stop()
        if len(herald.pruned) < 2:
            raise RuntimeError(f"saw {len(herald.pruned)} `pruned` lines within {timeout} s: "
                               f"{[line for _, line in herald.log[-10:]]}")
        (first_end, first_rows), (end, rows) = herald.pruned[:2]
        start = first_end + interval
        during = [(b - a) * 1000 for a, b in publishes if b >= start and a <= end]
        before = [(b - a) * 1000 for a, b in publishes if start - 1 - baseline <= a < start - 1]
        later = [(b - a) * 1000 for a, b in publishes if end + 2 <= a]
        counts = count_rows(path, band_end)
        result = dict(
            open_s=open_s, db_mib=db_mib, retention=retention, first_pass_rows=first_rows, rows=rows,
            pass_s=end - start, during=len(during), during_p50=percentile(during, 50),
            during_p99=percentile(during, 99), during_max=max(during), over_50ms=sum(ms > 50 for ms in during),
            base=len(before), base_p50=percentile(before, 50), base_p99=percentile(before, 99),
            base_max=max(before), after_p50=percentile(later, 50) if later else None,
            after_p99=percentile(later, 99) if later else None, wal_max_mib=wal_max[0] / 2**20,
            load_start=load_start, load_end=load_end, exit=code, counts=counts,
            warnings=[line for _, line in herald.log if " warning " in line or " error " in line][:5])
        return result
    finally:
        shutil.rmtree(data, ignore_errors=True)


def table(results):
    """One row per run, then the median of each binary's runs when there are three or more."""
    print("| binary | run | open s | pass s | rows pruned (as counted) | publishes during pass | during p50 / p99 / max ms "
          "| > 50 ms | baseline p50 / p99 / max ms | p50 during/baseline | WAL max MiB | load start → end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def ms(v):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"

    for label, runs in results.items():
        rows = [(str(n + 1), r) for n, r in enumerate(runs)]
        if len(runs) > 2:
            rows.append(("median", {k: statistics.median(r[k] for r in runs) for k in runs[0]
                                    if isinstance(runs[0][k], (int, float))}))
        for run, r in rows:
            load = f"{r['load_start'].split()[0]} → {r['load_end'].split()[0]}" if "load_start" in r else ""
            print(f"| {label} | {run} | {r['open_s']:.1f} | {r['pass_s']:.1f} | {r['rows']:,.0f} | {r['during']:,.0f} "
                  f"| {ms(r['during_p50'])} / {ms(r['during_p99'])} / {ms(r['during_max'])} | {r['over_50ms']:,.0f} "
                  f"| {ms(r['base_p50'])} / {ms(r['base_p99'])} / {ms(r['base_max'])} "
                  f"| {r['during_p50'] / r['base_p50']:,.0f}x | {r['wal_max_mib']:,.0f} | {load} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", action="append", help="LABEL=PATH or PATH, repeatable, oldest schema first "
                        "(default: build .build-release and use it)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="expiring rows of each kind")
    parser.add_argument("--channels", type=int, default=10_000, help="application channels of the expiring events")
    parser.add_argument("--events-per-check", type=int, default=2, help="events on each check's channel")
    parser.add_argument("--reps", type=int, default=2, help="runs of each binary, interleaved")
    parser.add_argument("--interval", type=int, default=60, help="janitor-interval of the measured runs, s")
    parser.add_argument("--baseline", type=float, default=20, help="seconds before the pass that are the baseline")
    parser.add_argument("--after", type=float, default=5, help="seconds of publishing after the pass")
    parser.add_argument("--timeout", type=float, default=1200, help="give up a run after this many seconds")
    parser.add_argument("--keep-seed", help="directory to keep the seeded store in, or to reuse it from")
    args = parser.parse_args()

    binaries = []
    for spec in args.binary or []:
        label, _, path = spec.rpartition("=")
        binaries.append((label or path, path))
    if not binaries:
        subprocess.run(["swift", "build", "-c", "release", "--product", "herald", "--scratch-path",
                        ".build-release"], cwd=ROOT, check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        binaries.append((head, str(ROOT / ".build-release" / "release" / "herald")))

    print(f"load average {loadavg()} at start", file=sys.stderr, flush=True)
    seed_dir = args.keep_seed or tempfile.mkdtemp(prefix="herald-janitor-seed-")
    seed_path = os.path.join(seed_dir, "store", "herald.sqlite")
    if args.keep_seed and os.path.exists(seed_path):
        band_end = int((pathlib.Path(seed_dir) / "band_end").read_text())
        print(f"reusing {seed_path}", file=sys.stderr, flush=True)
    else:
        os.makedirs(seed_dir, exist_ok=True)
        seed_path, band_end = make_seed(binaries[0][1], seed_dir, args.rows, args.channels,
                                        args.events_per_check)
    if args.reps == 0:
        return
    results = {label: [] for label, _ in binaries}
    try:
        for rep in range(args.reps):
            for label, binary in binaries:
                r = run_one(binary, seed_path, band_end, args.interval, args.baseline, args.after, args.timeout)
                results[label].append(r)
                print(f"rep {rep + 1} {label}: open {r['open_s']:.1f} s, pass {r['pass_s']:.2f} s "
                      f"({r['rows']:,} rows), {r['during']} publishes during it: p50 {r['during_p50']:.1f} "
                      f"p99 {r['during_p99']:.1f} max {r['during_max']:.1f} ms ({r['over_50ms']} > 50 ms); "
                      f"baseline {r['base']}: p50 {r['base_p50']:.1f} p99 {r['base_p99']:.1f} "
                      f"max {r['base_max']:.1f} ms; WAL max {r['wal_max_mib']:,.0f} MiB; "
                      f"load {r['load_start']} -> {r['load_end']}; exit {r['exit']}; {r['counts']}"
                      + (f"; warnings {r['warnings']}" if r["warnings"] else ""), file=sys.stderr, flush=True)
    finally:
        if not args.keep_seed:
            shutil.rmtree(seed_dir, ignore_errors=True)

    print(f"\n{args.rows:,} expiring rows of each kind (+{args.rows // 10:,} kept), {args.reps} interleaved "
          f"reps, janitor-interval {args.interval} s, baseline the {args.baseline:g} s before the pass\n")
    table(results)
    print(json.dumps({label: runs for label, runs in results.items()}))


if __name__ == "__main__":
    main()
