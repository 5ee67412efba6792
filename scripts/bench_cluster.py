#!/usr/bin/env python3
"""The cluster on PostgreSQL beside single-node SQLite (issue 17): publishes per second and the
delay from a publish on one node to its delivery on another.

Uses the neutral load generator of ../shared/bench (`fanout`, copied to .bench/ and built there,
as scripts/bench.py does); this script and bench.py are the only parts of the repository that
read ../shared. PostgreSQL is a throwaway server (scripts/throwaway-postgres.sh) with fsync on,
as in production. Every run starts fresh servers (a fresh data directory, or a fresh schema).

Setups, interleaved --reps times:
  sqlite    one node on SQLite (durability normal, the default)
  pg1       one node on PostgreSQL
  pg3       three nodes on one PostgreSQL database

Scenarios (fanout checks every message arrives exactly once):
  pub       publishes as fast as acks come: --channels channels, --pub-conns keep-alive publisher
            connections per publishing node, one SSE subscriber per channel. In pg3 one fanout
            process per node publishes to that node and subscribes on the next node; the rate is
            the sum of the three (they run together).
  lat       10 SSE subscribers, 1,000 messages/s for 10 s (16 publisher connections, so the rate
            holds); the subscribers on another node than the publisher in pg3 (on the same node
            otherwise): the delay from just before a publish is sent to its delivery, p50 and p99.
  lat200    the same at 200 messages/s: the delay where this machine is not saturated.
  lat10     1,000 messages/s over 10 channels, one subscriber each (publishes to one channel
            take turns on its row, one commit at a time; to ten they overlap).

Then `notify`: whether NOTIFY inside the publish transaction costs throughput under concurrent
publishers, measured on PostgreSQL alone with pgbench (the same upsert and insert as Herald's
append, 16 clients on 16 channels): without NOTIFY, with pg_notify in each transaction (the
design not taken), and without it plus one client notifying back to back in its own
transactions (the batched notifier's worst case: Herald's sends one per coalesced batch).

Needs the clone's venv, Debian's postgresql, gcc; a release build in .build-release:
    .venv/bin/python scripts/bench_cluster.py [--reps 3] [--binary .build-release/release/herald]
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid

from benchlib import HeraldProcess, release_binary

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(os.environ.get("HERALD_BENCH_DIR", ROOT.parent / "shared" / "bench"))
WORK = ROOT / ".bench"
KEY = "bench-cluster-key-0123456789"
BODY = '{"type":"bench","data":{"seq":{seq},"ts":{ts}}}'


def fanout_binary():
    if not (SOURCE / "fanout.c").exists():
        sys.exit(f"no load generator at {SOURCE}; set HERALD_BENCH_DIR")
    shutil.copytree(SOURCE, WORK, dirs_exist_ok=True, ignore=shutil.ignore_patterns("run", "results"))
    subprocess.run(["make", "-s"], cwd=WORK, check=True)
    return str(WORK / "fanout")


class Postgres:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="herald-bench-pg-")
        env = dict(os.environ, PG_FSYNC="on")
        self.url = subprocess.run([str(ROOT / "scripts" / "throwaway-postgres.sh"), "start", self.dir], env=env,
                                  check=True, capture_output=True, text=True).stdout.strip()
        self.port = (pathlib.Path(self.dir) / "port").read_text().strip()

    def schema_url(self):
        return f"{self.url}&search_path=bench_{uuid.uuid4().hex[:10]}"

    def psql(self, sql):
        bindir = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        return subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", self.port, "-U", "herald", "-d",
                               "herald", "-qAtc", sql], check=True, capture_output=True, text=True).stdout

    def stop(self):
        subprocess.run([str(ROOT / "scripts" / "throwaway-postgres.sh"), "stop", self.dir], check=False)


def postgres_cpu_seconds():
    """CPU of every running postgres process (backends that exit take theirs with them)."""
    total = 0.0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def fanout(binary, publish_on, subscribe_on, subscribers, messages, channels, pub_conns, rate=0):
    command = [binary, "-u", f"{subscribe_on.url}/api/v1/channels/{{ch}}/events?format=sse",
               "-p", f"{publish_on.url}/api/v1/channels/{{ch}}/events", "--pub-header", f"Authorization: Bearer {KEY}",
               "-b", BODY, "-n", str(subscribers), "-m", str(messages), "--channels", str(channels),
               "--pub-conns", str(pub_conns), "--drain-idle", "5", "--timeout", "300"]
    if rate:
        command += ["-r", str(rate)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def result(process):
    out, _ = process.communicate(timeout=400)
    data = json.loads(out.strip().splitlines()[-1])
    if data["exit"] != 0 or data["lost"] or data["dups"] or data["pub_errors"]:
        raise RuntimeError(f"fanout failed: {json.dumps(data)[:600]}")
    return data


def run(binary, fanout_bin, postgres, setup, scenario, args):
    store = postgres.schema_url() if setup != "sqlite" else None
    flags = ["--store", store] if store else []
    nodes = [HeraldProcess(binary, KEY, flags, prefix="herald-bench-node-") for _ in range(3 if setup == "pg3" else 1)]
    try:
        cpu_before = sum(node.cpu_seconds() for node in nodes)
        pg_before = postgres_cpu_seconds()
        if scenario == "pub":
            pairs = [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]
            share = args.messages // len(nodes)
            processes = [fanout(fanout_bin, a, b, args.channels, share, args.channels, args.pub_conns) for a, b in pairs]
        else:
            # Enough publisher connections that the rate holds whatever one publish takes.
            rate = 200 if scenario == "lat200" else 1000
            channels = 10 if scenario == "lat10" else 1
            processes = [fanout(fanout_bin, nodes[0], nodes[-1], 10, rate * 10, channels, 16, rate=rate)]
        parts = [result(process) for process in processes]
        cpu = sum(node.cpu_seconds() for node in nodes) - cpu_before
        pg_cpu = (postgres_cpu_seconds() - pg_before) if store else 0.0
    finally:
        for node in nodes:
            node.stop()
    published = sum(part["published"] for part in parts)
    return dict(rate=sum(part["pub_per_s"] for part in parts), p50=parts[0]["lat_ms"]["p50"],
                p99=parts[0]["lat_ms"]["p99"], herald_us=cpu / published * 1e6, pg_us=pg_cpu / published * 1e6,
                published=published, delivered=sum(part["received"] for part in parts))


PGBENCH_APPEND = """\\set ch random(1, 16)
BEGIN;
INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES ('c' || :ch, 'e', 1, 0)
  ON CONFLICT (name) DO UPDATE SET last_offset = channels.last_offset + 1 RETURNING last_offset \\gset
INSERT INTO events (channel, "offset", type, time, data) VALUES ('c' || :ch, :last_offset, 't', 0, '{"n":1}');
"""


def pgbench(postgres, seconds):
    """Appends per second on 16 channels with 16 clients: no NOTIFY, NOTIFY in the transaction,
    and no NOTIFY beside one client notifying back to back."""
    bindir = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    postgres.psql("DROP TABLE IF EXISTS events, channels; "
                  "CREATE TABLE channels (name text PRIMARY KEY, epoch text, last_offset bigint, updated_at bigint); "
                  "CREATE TABLE events (channel text REFERENCES channels (name), \"offset\" bigint, type text, "
                  "time bigint, data text, PRIMARY KEY (channel, \"offset\"))")
    directory = pathlib.Path(tempfile.mkdtemp(prefix="herald-pgbench-"))
    (directory / "plain.sql").write_text(PGBENCH_APPEND + "COMMIT;\n")
    (directory / "notify.sql").write_text(PGBENCH_APPEND + "SELECT pg_notify('herald_events', 'c' || :ch);\nCOMMIT;\n")
    (directory / "notifier.sql").write_text("SELECT pg_notify('herald_events', 'batch');\n")
    def command(clients, script):
        return [str(bindir / "pgbench"), "-h", "127.0.0.1", "-p", postgres.port, "-U", "herald", "-n", "-T",
                str(seconds), "-c", str(clients), "-j", str(min(clients, 2)), "-f", str(directory / script), "herald"]

    def tps(output):
        return float(next(line for line in output.splitlines() if line.startswith("tps")).split()[2])

    def measure(script, notifier=False):
        side = subprocess.Popen(command(1, "notifier.sql"), stdout=subprocess.PIPE, text=True) if notifier else None
        appends = tps(subprocess.run(command(16, script), check=True, capture_output=True, text=True).stdout)
        return appends, tps(side.communicate()[0]) if side else 0.0

    try:
        return {"no NOTIFY": measure("plain.sql"), "NOTIFY in each transaction": measure("notify.sql"),
                "no NOTIFY, one client notifying back to back": measure("plain.sql", notifier=True)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def cell(runs, key, fmt):
    values = [r[key] for r in runs]
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--messages", type=int, default=30000, help="messages of the pub scenario, over all nodes")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--pub-conns", type=int, default=16, help="publisher connections per publishing node")
    parser.add_argument("--pgbench-seconds", type=int, default=15, help="0: no pgbench comparison")
    parser.add_argument("--scenarios", default="pub,lat,lat200,lat10")
    parser.add_argument("--binary", help="a herald binary (default: build .build-release and use it)")
    args = parser.parse_args()

    binary = release_binary(args.binary)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    fanout_bin = fanout_binary()
    postgres = Postgres()
    setups, scenarios = ("sqlite", "pg1", "pg3"), tuple(args.scenarios.split(","))
    results = {(s, c): [] for s in setups for c in scenarios}
    load_start = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    try:
        for rep in range(args.reps):
            for setup in setups[rep % 3:] + setups[:rep % 3]:
                for scenario in scenarios:
                    r = run(binary, fanout_bin, postgres, setup, scenario, args)
                    results[(setup, scenario)].append(r)
                    print(f"rep {rep + 1} {setup:6} {scenario}: {r['rate']:8.0f} pub/s p50 {r['p50']:7.2f} ms "
                          f"p99 {r['p99']:7.2f} ms herald {r['herald_us']:.0f} us/pub postgres {r['pg_us']:.0f} us/pub",
                          file=sys.stderr, flush=True)
        notify = pgbench(postgres, args.pgbench_seconds) if args.pgbench_seconds else {}
    finally:
        postgres.stop()
    load_end = pathlib.Path("/proc/loadavg").read_text().split()[:3]

    print(f"commit {commit}; load average {' '.join(load_start)} at start, {' '.join(load_end)} at end; "
          f"{args.reps} interleaved reps; pub: {args.messages} messages on {args.channels} channels, "
          f"{args.pub_conns} publisher connections per node; delays: 10 SSE subscribers, 10 s of publishing, 16 publisher connections\n")
    labels = {"sqlite": "1 node, SQLite", "pg1": "1 node, PostgreSQL", "pg3": "3 nodes, PostgreSQL (subscribers on another node)"}
    titles = {"pub": "publishes as fast as acks come", "lat": "1,000/s to one channel", "lat200": "200/s to one channel",
              "lat10": "1,000/s over ten channels"}
    print("| setup | scenario | publishes/s (min-max) | herald CPU µs/publish | PostgreSQL CPU µs/publish "
          "| delay p50 ms (min-max) | delay p99 ms (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for setup in setups:
            runs = results[(setup, scenario)]
            print(f"| {labels[setup]} | {titles[scenario]} | {cell(runs, 'rate', '{:,.0f}')} "
                  f"| {statistics.median(r['herald_us'] for r in runs):.0f} "
                  f"| {statistics.median(r['pg_us'] for r in runs):.0f} | {cell(runs, 'p50', '{:.2f}')} "
                  f"| {cell(runs, 'p99', '{:.2f}')} |")
    print("\n| pgbench, 16 clients on 16 channels | appends/s | notifications/s |\n|---|---|---|")
    for name, (appends, notifies) in notify.items():
        print(f"| {name} | {appends:,.0f} | {notifies:,.0f} |")
    print(json.dumps(dict(commit=commit, load_start=load_start, load_end=load_end, notify=notify,
                          runs={f"{s}/{c}": v for (s, c), v in results.items()})))


if __name__ == "__main__":
    main()
